"""glm-monitor: the loss-spike dashboard. Not implemented yet (issue #7); says so instead of failing obscurely."""

import sys


def main() -> int:
    print("glm-monitor is not available yet: the loss-spike dashboard lands with issue #7.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
