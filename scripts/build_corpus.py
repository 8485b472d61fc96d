"""Build the embedded corpus (src/inplace_ttt/assets/corpus/) from two Debian packages.

Two public-domain English Bibles: the World English Bible with the Deuterocanon
(`sword-text-web`, modern English) and the King James Version (`sword-text-kjv`, 1769 text).
Debian ships each as a SWORD "zText" module: verse entries in zlib-compressed blocks, marked up
in OSIS XML. We read the modules with the standard library, turn each book of each translation
into one plain-text document (titles, chapter headings and paragraphs kept; footnotes and
Strong's-number tags dropped) and write one row per document to zstd-compressed parquet files,
`train.parquet` and `heldout.parquet`. Held-out books are whole books, in both translations,
never trained on.

    python scripts/build_corpus.py                       # apt-get download both packages, then build
    python scripts/build_corpus.py --deb sword-text-web_426.0-1_all.deb --deb sword-text-kjv_14.3-1_all.deb
"""

from __future__ import annotations

import argparse
import html
import re
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# package -> (translation, module folder inside the package)
SOURCES = {
    "sword-text-web": ("WEB", "usr/share/sword/modules/texts/ztext/engWEB2015eb"),
    "sword-text-kjv": ("KJV", "usr/share/sword/modules/texts/ztext/engKJV2006eb"),
}
OUT = Path(__file__).resolve().parents[1] / "src" / "inplace_ttt" / "assets" / "corpus"
# whole books kept out of training, chosen across genres (law/history, wisdom, prophecy,
# deuterocanon, gospel, letter) and not parallel to a training book (no synoptic gospel)
HELDOUT = ("Josh", "Prov", "Jonah", "Tob", "John", "Heb")

BOOK_EDGE = re.compile(r'<div\b(?=[^>]*\btype="book")[^>]*\b(sID|eID)="[^"]*"[^>]*/>')  # a book's start or end
OSIS_ID = re.compile(r'\bosisID="([^"]+)"')
NOTE = re.compile(r"<note\b.*?</note>", re.S)
TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.S)
CHAPTER = re.compile(r'<chapter\b[^>]*\bn="(\d+)"[^>]*\bsID="[^"]*"[^>]*/>')
PARAGRAPH_END = re.compile(r'<div\b[^>]*\beID="[^"]*"[^>]*/>|<lb\b[^>]*/>|<l\b[^>]*eID="[^"]*"[^>]*/>')
TAG = re.compile(r"<[^>]+>")
NOTE_MARK = "\x00"  # where a footnote stood: a space if it sat between two words, else nothing
BOOK_NAME = re.compile(r'<milestone\b[^>]*\bn="([^"]+)"[^>]*type="x-usfm-h"')


def module_entries(module: Path, testament: str) -> list[str]:
    """The verse-index entries of one testament ("ot"/"nt"), in canonical order."""
    index = (module / f"{testament}.bzs").read_bytes()
    data = (module / f"{testament}.bzz").read_bytes()
    blocks = [zlib.decompress(data[off : off + size]) for off, size, _ in struct.iter_unpack("<III", index)]
    verses = (module / f"{testament}.bzv").read_bytes()
    return [blocks[b][off : off + size].decode("utf-8") for b, off, size in struct.iter_unpack("<IIH", verses)]


def osis_to_text(osis: str, name: str) -> str:
    """Plain text of one book's OSIS: titles and chapter headings on lines of their own."""
    osis = NOTE.sub(NOTE_MARK, osis)
    osis = TITLE.sub(lambda m: f"\n\n{m.group(1)}\n\n", osis)
    osis = CHAPTER.sub(lambda m: f"\n\n{name} {m.group(1)}\n\n", osis)
    osis = PARAGRAPH_END.sub("\n", osis)
    text = re.sub(rf"(?<=\w){NOTE_MARK}+(?=\w)", " ", TAG.sub("", osis)).replace(NOTE_MARK, "")
    text = html.unescape(text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def books(module: Path) -> list[tuple[str, str, str]]:
    """(osis id, name, text) of every canonical book of the module; front matter is dropped."""
    out = []
    for testament in ("ot", "nt"):
        osis = " ".join(module_entries(module, testament))
        edges = list(BOOK_EDGE.finditer(osis))
        for m, nxt in zip(edges, edges[1:] + [None]):
            if m.group(1) != "sID":
                continue
            book_id = OSIS_ID.search(m.group(0)).group(1)
            body = osis[m.end() : nxt.start() if nxt else len(osis)]  # to the book's end (or the next book)
            name = BOOK_NAME.search(body)
            name = html.unescape(name.group(1)) if name else book_id
            out.append((book_id, name, osis_to_text(body, name)))
    return out


def extract(package: str, debs: list[Path], workdir: Path) -> Path:
    """The package's module folder, from a given .deb or one fetched with apt-get."""
    deb = next((d for d in debs if d.name.startswith(f"{package}_")), None)
    if deb is None:
        subprocess.run(["apt-get", "download", package], cwd=workdir, check=True)
        deb = next(workdir.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / package)], check=True)
    return workdir / package / SOURCES[package][1]


def write(rows: list[tuple[str, str, str]], path: Path) -> None:
    table = pa.table({"id": [r[0] for r in rows], "title": [r[1] for r in rows], "text": [r[2] for r in rows]})
    pq.write_table(table, path, compression="zstd", compression_level=19)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deb", type=Path, action="append", default=[], help=f"a downloaded .deb of {list(SOURCES)} (default: apt-get download)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    all_books = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, (translation, _) in SOURCES.items():
            found = books(extract(package, [d.resolve() for d in args.deb], Path(tmp)))
            all_books += [(f"{translation}.{book}", f"{name} ({translation})", text) for book, name, text in found]
    heldout = [b for b in all_books if b[0].split(".")[1] in HELDOUT]
    missing = set(HELDOUT) - {b[0].split(".")[1] for b in heldout}
    if missing:
        raise SystemExit(f"held-out books found in no package: {sorted(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", [b for b in all_books if b not in heldout]), ("heldout", heldout)):
        write(rows, args.out / f"{split}.parquet")
        chars = sum(len(r[2]) for r in rows)
        print(f"{split}: {len(rows)} books, {chars:,} characters -> {(args.out / f'{split}.parquet').stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
