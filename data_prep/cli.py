"""glm-prep: data preparation (Pile/WuDao/MIP to indexed datasets). Not implemented yet (issue #3); says so instead of failing obscurely."""

import sys


def main() -> int:
    print("glm-prep is not available yet: data preparation (Pile/WuDao/MIP to indexed datasets) lands with issue #3.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
