"""Fail if the sdist lacks a tracked file of csrc/ (the headers are not listed as sources,
so only MANIFEST.in brings them in; without them `pip install deconvkernels-*.tar.gz`
cannot compile)."""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", out], cwd=root,
                       check=True, stdout=subprocess.DEVNULL)
        (archive,) = Path(out).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            packed = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files", "csrc", "LICENSE", "README.md"], cwd=root,
                             check=True, capture_output=True, text=True).stdout.split()
    missing = sorted(set(tracked) - packed)
    if missing:
        print(f"the sdist lacks {missing}: see MANIFEST.in", file=sys.stderr)
        return 1
    print(f"sdist carries all {len(tracked)} tracked files of csrc/, LICENSE and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
