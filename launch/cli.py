"""glm-launch: Slurm planning, submission and the local launcher. Not implemented yet (issue #5); says so instead of failing obscurely."""

import sys


def main() -> int:
    print("glm-launch is not available yet: Slurm planning, submission and the local launcher lands with issue #5.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
