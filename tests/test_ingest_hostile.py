"""`newsdl ingest` on hostile or damaged input (issue 11): every record read is accepted or
rejected on its own, with its file, line or row, field and reason; a file that cannot be read is
one line on stderr and exit status 2; nothing crashes, hangs or exhausts memory."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from newsdl import defaults


def good(i: int, prefix: str = "g") -> dict:
    return {"id": f"{prefix}{i}", "text": f"Article number {i}, about the weather.", "title": f"Title {i}"}


def jsonl_bytes(records: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def outputs(ws: Path):
    """(articles as dicts, rejects, manifest counts); articles.parquet must hold valid UTF-8 only."""
    folder = ws / "ingest"
    articles = pq.read_table(folder / "articles.parquet")
    articles.validate(full=True)  # raises on an invalid UTF-8 string
    rejected = [json.loads(line) for line in (folder / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    assert counts["accepted"] + counts["rejected"] == counts["records_read"]
    assert counts["rejected"] == len([r for r in rejected if "image" not in r])
    return articles.to_pylist(), rejected, counts


def cli_ok(tmp_path: Path, *inputs: Path, extra: tuple = ()):
    result = run_cli("ingest", *inputs, "-w", tmp_path / "ws", *extra)
    assert result.returncode == 0, result.stderr
    return outputs(tmp_path / "ws")


def cli_fails(tmp_path: Path, *inputs: Path, extra: tuple = ()) -> str:
    result = run_cli("ingest", *inputs, "-w", tmp_path / "ws", *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("newsdl: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


def only(rejected: list, **match) -> dict:
    found = [r for r in rejected if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, rejected)
    return found[0]


# ------------------------------------------------------------------ 1: one bad record costs only itself

def test_csv_row_with_bad_utf8_costs_only_that_row(tmp_path):
    path = tmp_path / "in.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "text", "title"])
    for i in range(40):
        writer.writerow([f"g{i}", f"Article {i}, with a comma", f"T{i}"])
    head = buf.getvalue().encode()
    bad = "latin,Caf\u00e9 cr\u00e8me in latin-1,T\r\n".encode("latin-1")
    buf = io.StringIO()
    writer = csv.writer(buf)
    for i in range(40, 50):
        writer.writerow([f"g{i}", f"Article {i}\nover two lines", f"T{i}"])
    path.write_bytes(head + bad + buf.getvalue().encode())

    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == [f"g{i}" for i in range(50)]
    assert articles[45]["text"] == "Article 45\nover two lines"
    assert counts["records_read"] == 51 and counts["rejected"] == 1
    rej = only(rejected, code="bad_utf8")
    assert rej["row"] == 41 and rej["field"] == "text" and rej["id"] == "latin"


def test_csv_column_name_with_bad_utf8_costs_only_the_rows_that_use_it(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,text,r\xe9sum\xe9\nc0,first,\nc1,second,a value\nc2,third,\n")
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["c0", "c2"]
    assert [(r["row"], r["code"], r["field"]) for r in rejected] == [(2, "bad_utf8", "r\\xe9sum\\xe9")]


def test_json_array_nan_and_garbage_cost_only_their_records(tmp_path):
    parts = [json.dumps(good(i)) for i in range(40)]
    parts.append('{"id": "nan", "text": "x", "lat": NaN, "lon": 1.0}')
    parts.append('{"id": "inf", "text": "x", "popularity": {"comments": Infinity}}')
    parts.append('{"id": oops, "text": [1, 2}')
    parts.append('"just a string"')
    parts.append('{"id": "open", "text": "an unterminated string}')
    parts += [json.dumps(good(i)) for i in range(40, 50)]
    path = tmp_path / "in.json"
    path.write_text("[\n" + ",\n".join(parts) + "\n]\n")

    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == [f"g{i}" for i in range(50)]
    assert counts["records_read"] == 55 and counts["rejected"] == 5
    assert only(rejected, id="nan")["code"] == "geo_nan"
    assert only(rejected, id="inf")["code"] == "wrong_type"
    assert [r["row"] for r in rejected if r["code"] == "unparsable"] == [43, 45]
    assert only(rejected, code="not_an_object")["row"] == 44


def test_json_array_cut_short_keeps_the_records_before(tmp_path):
    text = json.dumps([good(i) for i in range(30)])
    path = tmp_path / "in.json"
    path.write_text(text[: text.index('"g20"') + 3])  # inside record 21
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert len(articles) == 20 and counts["records_read"] == 21
    rej = only(rejected, code="unparsable")
    assert rej["row"] == 21 and "rest of the file" in rej["reason"]


def test_records_split_across_read_blocks(tmp_path):
    """Strings with brackets, commas, quotes and backslashes, cut at every edge of tiny read blocks."""
    from newsdl.ingest.readers import Renamer, read_csv, read_json_array

    records = [{"id": f"s{i}", "text": 'a "quoted" [x], {y},\nback\\slash\\\\ ' * (i % 3 + 1) + "\\"}
               for i in range(25)]
    array = tmp_path / "in.json"
    array.write_text(json.dumps(records, indent=1))
    table = tmp_path / "in.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(records)
    for reader, path in ((read_json_array, array), (read_csv, table)):
        for block in (1, 2, 7, 64):
            batches = list(reader(path, Renamer({}), block_bytes=block))
            assert [r for b in batches for r in b.rejects] == []
            assert [t for b in batches for t in b.table.column("text").to_pylist()] == [r["text"] for r in records]


# ------------------------------------------------------------------ 4: limits on size and depth

def deep(levels: int) -> bytes:
    return b'{"id": "deep%d", "text": "x", "nest": ' % levels + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def test_deep_jsonl_lines_are_rejected_not_crashes(tmp_path):
    limit = defaults.MAX_JSON_DEPTH
    brackets_in_strings = {"id": "strings", "text": "[{" * 5000, "title": "]" * 100}
    lines = [good(0), deep(100_000), good(1), deep(10_000), deep(limit + 1), deep(limit), brackets_in_strings]
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes(lines))
    broken = tmp_path / "broken.jsonl"  # a bad line sends this block record by record
    broken.write_bytes(jsonl_bytes([{"id": "b0", "text": "x"}, deep(100), b"{broken", {"id": "b1", "text": "y"}]))
    articles, rejected, counts = cli_ok(tmp_path, path, broken)
    assert [a["id"] for a in articles] == ["g0", "g1", f"deep{limit}", "strings", "b0", "b1"]
    assert sorted((Path(r["file"]).name, r["line"], r["code"]) for r in rejected) == [
        ("broken.jsonl", 2, "too_deep"), ("broken.jsonl", 3, "unparsable"),
        ("in.jsonl", 2, "too_deep"), ("in.jsonl", 4, "too_deep"), ("in.jsonl", 5, "too_deep")]
    assert counts["records_read"] == 11


def test_deep_records_in_json_array_and_csv_cells(tmp_path):
    array = tmp_path / "in.json"
    array.write_bytes(b"[" + b",".join([json.dumps(good(0)).encode(), deep(50_000), json.dumps(good(1)).encode()])
                      + b"]")
    table = tmp_path / "in.csv"
    table.write_text('id,text,images\nc0,x,"' + "[" * 50_000 + "]" * 50_000 + '"\nc1,y,\n')
    articles, rejected, counts = cli_ok(tmp_path, array, table)
    assert [a["id"] for a in articles] == ["g0", "g1", "c1"]
    assert only(rejected, code="too_deep", file=str(array))["row"] == 2
    assert only(rejected, code="too_deep", file=str(table))["field"] == "images"


def test_over_long_lines_are_rejected_and_skipped(tmp_path):
    big = defaults.MAX_LINE_BYTES + 10
    path = tmp_path / "in.jsonl"
    with open(path, "wb") as fh:
        fh.write(jsonl_bytes([good(0)]))
        fh.write(b'{"id": "long1", "text": "' + b"a" * (2 * big) + b'"}\n')  # runs past the end of a read block
        fh.write(jsonl_bytes([good(1)]))
        fh.write(b'{"id": "long2", "text": "' + b"b" * (big // 2) + b'"}' + b" " * big + b"\n")
        fh.write(jsonl_bytes([good(2)]))
        fh.write(b"x" * big)  # the last line, with no newline
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["g0", "g1", "g2"]
    assert sorted(r["line"] for r in rejected if r["code"] == "line_too_long") == [2, 4, 6]
    assert all(len(json.dumps(r)) < 2000 for r in rejected)  # a preview, not the line


def test_a_huge_line_is_read_past_in_bounded_memory(tmp_path):
    path = tmp_path / "in.jsonl"
    with open(path, "wb") as fh:
        fh.write(jsonl_bytes([good(0)]) + b'{"id": "huge", "text": "')
        for _ in range(20):
            fh.write(b"z" * (10 << 20))
        fh.write(b'"}\n' + jsonl_bytes([good(1)]))
    code = ("import resource, sys\nfrom pathlib import Path\nfrom newsdl.ingest.run import ingest\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "result = ingest([Path(sys.argv[1])], Path(sys.argv[2]))\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print((after - before) // 1024, result.counts['accepted'], result.counts['rejected'])\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "ws")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown_mb, accepted, rejected = map(int, out.stdout.split())
    assert (accepted, rejected) == (2, 1)
    assert grown_mb < 150, f"peak RSS grew {grown_mb} MiB reading a 200 MiB line"


def test_gzip_bomb_is_refused_with_exit_2(tmp_path):
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_bytes([good(0), good(1)])) + member * 100)  # 100 MiB from ~100 KiB
    line = cli_fails(tmp_path, path)
    assert str(path) in line and "decompresses to more than" in line


def test_gzip_within_the_budget_is_read(tmp_path):
    records = [good(i) for i in range(2000)]
    path = tmp_path / "in.jsonl.gz"
    padding = b"\0" * 64  # between members, as some tools write it
    path.write_bytes(gzip.compress(jsonl_bytes(records[:1000])) + padding + gzip.compress(jsonl_bytes(records[1000:])))
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert len(articles) == 2000 and rejected == []


def test_strings_over_max_text_chars_are_rejected(tmp_path):
    limit = defaults.MAX_TEXT_CHARS
    records = [
        {"id": "at-limit", "text": "é" * limit},
        {"id": "long-text", "text": "a" * (limit + 1)},
        {"id": "long-title", "text": "x", "title": "t" * (limit + 1)},
        {"id": "long-caption", "text": "x", "images": [{"path": "a.jpg", "caption": "c" * (limit + 1)}]},
        {"id": "long-keyword", "text": "x", "keywords": ["ok", "k" * (limit + 1)]},
        good(0),
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes(records))
    as_csv = tmp_path / "in.csv"
    with open(as_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "title"])
        writer.writerow(["csv-long", "b" * (limit + 1), ""])
        writer.writerow(["csv-ok", "fine", ""])
    articles, rejected, counts = cli_ok(tmp_path, path, as_csv)
    assert [a["id"] for a in articles] == ["at-limit", "g0", "csv-ok"]
    codes = {r["id"]: (r["code"], r["field"]) for r in rejected if "image" not in r}
    assert codes == {"long-text": ("text_too_long", "text"), "long-title": ("string_too_long", "title"),
                     "long-caption": ("string_too_long", "images.caption"),
                     "long-keyword": ("string_too_long", "keywords"), "csv-long": ("text_too_long", "text")}


def test_csv_rows_over_the_line_limit_cost_only_themselves(tmp_path):
    big = defaults.MAX_LINE_BYTES + 100
    path = tmp_path / "in.csv"
    with open(path, "wb") as fh:
        fh.write(b"id,text\nc0,first\n")
        fh.write(b'long1,"' + b"line\n" * (big // 5) + b'end"\n')  # a quoted field of many lines
        fh.write(b"c1,second\n")
        fh.write(b'long2,"' + b"q" * big + b'"\n')  # one physical line
        fh.write(b'c2,"third, quoted"\n')
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["c0", "c1", "c2"]
    assert [(r["row"], r["code"]) for r in rejected] == [(2, "record_too_long"), (4, "record_too_long")]
    assert csv.field_size_limit() <= defaults.MAX_LINE_BYTES


def test_json_array_element_over_the_limit_costs_only_itself(tmp_path):
    path = tmp_path / "in.json"
    long = b'{"id": "long", "text": "' + b"a" * (defaults.MAX_LINE_BYTES + 1) + b'"}'
    path.write_bytes(b"[" + b", ".join([json.dumps(good(0)).encode(), long, json.dumps(good(1)).encode()]) + b"]")
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["g0", "g1"]
    assert only(rejected, code="record_too_long")["row"] == 2


# ------------------------------------------------------------------ 6: invalid UTF-8

BAD_UTF8_LINES = [
    (b'{"id": "t", "text": "caf\xe9"}', "text"),
    (b'{"id": "u", "text": "x", "section": "caf\xe9"}', "section"),
    (b'{"id": "v", "text": "x", "title": "caf\xe9"}', "title"),
    (b'{"id": "w", "text": "x", "images": [{"path": "a.jpg", "caption": "caf\xe9"}]}', "images[0].caption"),
    (b'{"id": "s", "text": "lone \\ud800 surrogate"}', "text"),
    (b'{"id": "k", "text": "x", "geo": {"lat": 1, "lon": 2, "note": "caf\xe9"}}', ""),
]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_invalid_utf8_is_rejected_with_its_field(tmp_path, fmt):
    records = [json.dumps(good(0)).encode()] + [line for line, _ in BAD_UTF8_LINES] + [json.dumps(good(1)).encode()]
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(b"\n".join(records) + b"\n" if fmt == "jsonl" else b"[" + b",\n".join(records) + b"]")
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["g0", "g1"]
    assert {(r["id"], r["field"]) for r in rejected} == {(line[8:9].decode(), f) for line, f in BAD_UTF8_LINES}
    assert {r["code"] for r in rejected} == {"bad_utf8"}


def test_invalid_utf8_in_parquet_is_rejected(tmp_path):
    text = pa.array([b"fine", b"caf\xe9", b"also fine"], pa.binary()).view(pa.string())
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["p0", "p1", "p2"], "text": text}), path)
    articles, rejected, counts = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["p0", "p2"]
    assert [(r["row"], r["code"], r["field"]) for r in rejected] == [(2, "bad_utf8", "text")]


def test_predict_reads_invalid_utf8_as_a_reject(tmp_path):
    from newsdl.tasks.predict import read_articles

    path = tmp_path / "new.jsonl"
    path.write_bytes(jsonl_bytes([good(0), b'{"id": "t", "text": "caf\xe9"}', good(1)]))
    table, rejects, _ = read_articles(path, None)
    assert table.column("id").to_pylist() == ["g0", "g1"]
    assert [(r["line"], r["code"], r["field"]) for r in rejects] == [(2, "bad_utf8", "text")]


# ------------------------------------------------------------------ 8: damaged gzip

@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_truncated_gzip_is_a_damaged_file_exit_2(tmp_path, suffix):
    records = [good(i) for i in range(3000)]
    if suffix == ".jsonl.gz":
        raw = jsonl_bytes(records)
    elif suffix == ".json.gz":
        raw = json.dumps(records).encode()
    else:
        raw = ("id,text,title\n" + "".join(f'{r["id"]},"{r["text"]}",{r["title"]}\n' for r in records)).encode()
    data = gzip.compress(raw)
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data[: len(data) // 2])
    line = cli_fails(tmp_path, path)
    assert str(path) in line and "ends early" in line and "damaged" in line
    line = cli_fails(tmp_path, path, extra=("--strict", "--force"))
    assert str(path) in line and "ends early" in line

    # predict keeps what it could read before the cut and rejects the rest with the reason.
    from newsdl.ingest import readers

    batches = list(readers.read(path, readers.Renamer({})))
    kept = sum(b.table.num_rows for b in batches)
    rejects = [r for b in batches for r in b.rejects]
    assert 0 < kept < 3000 and [r["code"] for r in rejects] == ["truncated"]
    assert sum(b.read for b in batches) == kept + 1


def test_not_gzip_and_bad_crc_exit_2_naming_the_file(tmp_path):
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_bytes(jsonl_bytes([good(0)]))
    line = cli_fails(tmp_path, plain)
    assert str(plain) in line and "gzip" in line

    data = bytearray(gzip.compress(jsonl_bytes([good(i) for i in range(10)])))
    data[-8] ^= 0xFF  # the CRC-32 of the trailer
    crc = tmp_path / "crc.jsonl.gz"
    crc.write_bytes(bytes(data))
    line = cli_fails(tmp_path, crc)
    assert str(crc) in line and "gzip" in line


# ------------------------------------------------------------------ 18: smaller cases

def test_json_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "in.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([good(0), good(1)]).encode())
    articles, rejected, _ = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["g0", "g1"] and rejected == []


def test_ids_are_stripped_and_nfc_normalised_in_every_path(tmp_path):
    composed = "caf\u00e9"
    assert unicodedata.normalize("NFD", composed) != composed

    def ids(p):
        return [f" {p}", p, f"{p} ", p + composed, unicodedata.normalize("NFD", p + composed)]

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(jsonl_bytes([{"id": i, "text": "x"} for i in ids("a")]))
    broken = tmp_path / "broken.jsonl"  # a bad line sends this block record by record
    broken.write_bytes(jsonl_bytes([{"id": i, "text": "x"} for i in ids("b")] + [b"{not json"]))
    table = tmp_path / "in.csv"
    table.write_text("id,text\n" + "".join(f"{i},x\n" for i in ids("c")), encoding="utf-8")
    articles, rejected, counts = cli_ok(tmp_path, jsonl, broken, table)
    assert [a["id"] for a in articles] == ["a", "a" + composed, "b", "b" + composed, "c", "c" + composed]
    assert counts["rejected_by_reason"] == {"duplicate_id": 9, "unparsable": 1}


def test_invisible_only_text_is_empty(tmp_path):
    texts = ["\u200b", " \u200c\u200d ", "\u2060\ufeff", "\u00a0\u3000\t", "zero\u200bwidth"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes([{"id": f"i{k}", "text": t} for k, t in enumerate(texts)]))
    articles, rejected, _ = cli_ok(tmp_path, path)
    assert [a["id"] for a in articles] == ["i4"]
    assert {r["id"]: r["code"] for r in rejected} == {f"i{k}": "empty_text" for k in range(4)}


def test_reduced_precision_dates_and_implausible_years(tmp_path):
    dates = {"y": "2014", "ym": "2014-05", "d": "2014-05-02", "late": "2100-12-31T23:59:59Z",
             "far": "9999-12-31", "early": "1799-12-31", "bad-month": "2014-13", "zero": "0001-01-01T00:00:00Z"}
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes([{"id": k, "text": "x", "published": v} for k, v in dates.items()]))
    articles, rejected, _ = cli_ok(tmp_path, path)
    published = {a["id"]: a["published"].isoformat() for a in articles}
    assert published == {"y": "2014-01-01T00:00:00+00:00", "ym": "2014-05-01T00:00:00+00:00",
                         "d": "2014-05-02T00:00:00+00:00", "late": "2100-12-31T23:59:59+00:00"}
    assert {r["id"]: r["code"] for r in rejected} == {k: "bad_date" for k in ("far", "early", "bad-month", "zero")}
    assert "1800" in only(rejected, id="far")["reason"]
