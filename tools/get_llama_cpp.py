"""Fetch llama.cpp's HF -> GGUF converter from PyPI, pinned by hash: no GitHub, no C++ build.

The llama-cpp-python sdist vendors llama.cpp; only `convert_hf_to_gguf.py`, its `conversion/` package and `gguf-py/`
are extracted, into `.cache/llama.cpp/`, where `export.format=gguf` finds them (q8_0 and f16; q4_k_m also needs
llama.cpp's `llama-quantize`, a C++ build: README, "Export"). Quick when already there. `--optional`: a failed
download is a warning, not an error (`make setup` goes on; a GGUF export is then refused with one line).
"""

import hashlib
import io
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
       f"llama_cpp_python-{VERSION}.tar.gz")
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
OUT = Path(__file__).resolve().parent.parent / ".cache" / "llama.cpp"


def fetch(out: Path = OUT) -> None:
    stamp = out / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == f"llama-cpp-python {VERSION}":
        return
    with urllib.request.urlopen(URL, timeout=120) as response:
        archive = response.read()
    digest = hashlib.sha256(archive).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{URL} has sha256 {digest}, not the pinned {SHA256}")
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(KEEP) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 checks paths
        tar.extractall(staging, members=members, **safe)
    (staging / "VERSION").write_text(f"llama-cpp-python {VERSION}\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"llama.cpp's GGUF converter (from llama-cpp-python {VERSION} on PyPI) is in {out}")


if __name__ == "__main__":
    try:
        fetch()
    except Exception as error:  # noqa: BLE001 - no network or another index: GGUF export is refused with one line
        if "--optional" not in sys.argv:
            raise
        print(f"warning: llama.cpp's GGUF converter not fetched ({error}); export.format=gguf will say how to get it",
              file=sys.stderr)
