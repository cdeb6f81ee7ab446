"""glm-ckpt: checkpoint inspection and conversion. Not implemented yet (issue #6); says so instead of failing obscurely."""

import sys


def main() -> int:
    print("glm-ckpt is not available yet: checkpoint inspection and conversion lands with issue #6.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
