"""Text and Parquet readers: parsing against pure-Python references, malformed lines,
positions, determinism across threads and block sizes, bad input."""

from __future__ import annotations

import gzip
import os
import random
import struct

import numpy as np
import pytest

import sparsecore.data as scd

M64 = (1 << 64) - 1


# -- reference of the documented id contract (csrc/sparsecore/io/feature_hash.h) -------------
def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def fnv1a64(s: bytes) -> int:
    h = 0xCBF29CE484222325
    for c in s:
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def ref_id(feature: str, value: str | bytes) -> int:
    v = value.encode() if isinstance(value, str) else value
    h = splitmix64(fnv1a64(feature.encode()) ^ len(v))
    for i in range(0, len(v), 8):
        w = int.from_bytes(v[i:i + 8].ljust(8, b"\0"), "little")
        h = splitmix64(h ^ w)
    return struct.unpack("<q", struct.pack("<Q", h))[0]


def bags(batch: scd.Batch, name: str) -> list[list[int]]:
    ids, offsets, *_ = batch.sparse[name]
    return [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(batch.num_samples)]


def read_all(reader, batch_size=None) -> scd.Batch | None:
    batches = []
    while (b := reader.next_batch(batch_size)) is not None:
        batches.append(b)
    return scd.concat_batches(batches) if batches else None


@pytest.mark.parametrize("value", ["", "a", "68fd1e64", "exactly8", "nine char", "x" * 40, "ünïcode"])
def test_feature_id_matches_documented_contract(value):
    assert scd.feature_id("C7", value) == ref_id("C7", value)
    assert scd.feature_id("C7", value) != scd.feature_id("C8", value) or value == ""


# -- Criteo --------------------------------------------------------------------------------
def criteo_line(rng: random.Random, label=None, missing=0.2) -> tuple[str, dict]:
    label = rng.randint(0, 1) if label is None else label
    ints = [None if rng.random() < missing else rng.randint(-3, 10**6) for _ in range(13)]
    cats = [None if rng.random() < missing else f"{rng.getrandbits(32):08x}" for _ in range(26)]
    fields = [str(label)] + ["" if v is None else str(v) for v in ints] + ["" if v is None else v for v in cats]
    return "\t".join(fields), {"label": label, "ints": ints, "cats": cats}


def write(path, lines: list[str], newline="\n", trailing=True) -> str:
    text = newline.join(lines) + (newline if trailing else "")
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def test_criteo_parses_labels_dense_and_hashed_categoricals(tmp_path):
    rng = random.Random()
    lines, refs = zip(*[criteo_line(rng) for _ in range(57)])
    path = write(tmp_path / "day0.tsv", list(lines))
    b = read_all(scd.CriteoReader(path, batch_size=16))
    assert b.num_samples == 57
    np.testing.assert_array_equal(b.labels, [r["label"] for r in refs])
    np.testing.assert_array_equal(b.dense, [[0 if v is None else v for v in r["ints"]] for r in refs])
    assert b.dense.dtype == np.float32 and b.labels.dtype == np.float32
    assert list(b.sparse) == [f"C{k}" for k in range(1, 27)]
    for k in range(26):
        expected = [[] if r["cats"][k] is None else [ref_id(f"C{k + 1}", r["cats"][k])] for r in refs]
        assert bags(b, f"C{k + 1}") == expected


def test_criteo_counts_malformed_lines_with_line_numbers(tmp_path):
    rng = random.Random()
    good = [criteo_line(rng)[0] for _ in range(6)]
    lines = [
        good[0],
        "",                                 # 2: empty, skipped silently
        "2" + good[1][1:],                  # 3: bad label
        good[2],
        "\t".join(good[3].split("\t")[:30]),  # 5: missing fields
        "1\tx" + "\t" * 38,                # 6: non-integer I1
        good[4],
        "\t".join(good[5].split("\t")[:14] + ["nothex!"] + good[5].split("\t")[15:]),  # 8: bad C1
        good[5],
    ]
    path = write(tmp_path / "bad.tsv", lines, newline="\r\n")  # CRLF throughout
    r = scd.CriteoReader(path, batch_size=4, max_bad_fraction=1.0)
    b = read_all(r)
    assert b.num_samples == 4
    assert r.malformed_count == 4
    assert [(m.line_number, m.path) for m in r.malformed_lines] == [(3, path), (5, path), (6, path), (8, path)]
    assert "label" in r.malformed_lines[0].reason and "fields" in r.malformed_lines[1].reason
    kept = (good[0], good[2], good[4], good[5])
    np.testing.assert_array_equal(b.labels, [int(x.split("\t")[0]) for x in kept])
    np.testing.assert_array_equal(b.dense[:, 0], [float(x.split("\t")[1] or 0) for x in kept])


def test_criteo_without_labels_and_without_trailing_newline(tmp_path):
    rng = random.Random()
    lines = [criteo_line(rng)[0].split("\t", 1)[1] for _ in range(5)]
    path = write(tmp_path / "test.tsv", lines, trailing=False)
    b = read_all(scd.CriteoReader(path, has_labels=False))
    assert b.num_samples == 5 and b.labels is None and b.dense.shape == (5, 13)


# -- libsvm / libffm -----------------------------------------------------------------------
def test_libsvm_ids_weights_and_binary_labels(tmp_path):
    rng = np.random.default_rng()
    rows = []
    for _ in range(40):
        k = int(rng.integers(0, 6))
        ids = rng.integers(-(2**62), 2**62, size=k)
        vals = rng.normal(size=k).astype(np.float32)
        rows.append((int(rng.choice([-1, 1])), ids, vals))
    lines = [f"{'+1' if y > 0 else '-1'} qid:3 " + " ".join(f"{i}:{v!r}" for i, v in zip(ids, vals.tolist()))
             for y, ids, vals in rows]
    path = write(tmp_path / "a.svm", lines)
    b = read_all(scd.LibsvmReader(path, batch_size=7))
    ids, offsets, weights = b.sparse["features"]
    np.testing.assert_array_equal(b.labels, [1.0 if y > 0 else 0.0 for y, _, _ in rows])
    np.testing.assert_array_equal(ids, np.concatenate([r[1] for r in rows]))
    np.testing.assert_array_equal(weights, np.concatenate([r[2] for r in rows]))
    np.testing.assert_array_equal(np.diff(offsets), [len(r[1]) for r in rows])

    raw = read_all(scd.LibsvmReader(path, binary_labels=False))
    np.testing.assert_array_equal(raw.labels, [y for y, _, _ in rows])


def test_libsvm_malformed_tokens(tmp_path):
    path = write(tmp_path / "m.svm", ["1 3:1.5", "x 1:1", "0 4", "1 a:2", "0 5:nan", "  ", "0 7:0.25 8:1e3"])
    r = scd.LibsvmReader(path, max_bad_fraction=1.0)
    b = read_all(r)
    assert b.num_samples == 2 and r.malformed_count == 4
    assert [m.line_number for m in r.malformed_lines] == [2, 3, 4, 5]
    np.testing.assert_array_equal(b.sparse["features"][0], [3, 7, 8])


def test_libffm_groups_by_field(tmp_path):
    path = write(tmp_path / "a.ffm", ["1 0:5:1 2:9:0.5 0:6:2", "0 1:3:1", "1 3:1:1", "0"])
    r = scd.LibffmReader(path, ["user", "ad", "ctx"], max_bad_fraction=1.0)
    b = read_all(r)
    assert b.num_samples == 3 and r.malformed_count == 1 and r.malformed_lines[0].line_number == 3
    assert bags(b, "user") == [[5, 6], [], []]
    assert bags(b, "ad") == [[], [3], []]
    assert bags(b, "ctx") == [[9], [], []]
    np.testing.assert_array_equal(b.sparse["user"][2], [1.0, 2.0])


# -- CSV -----------------------------------------------------------------------------------
CSV_COLUMNS = [("y", "label"), ("age", "dense"), ("city", "categorical", "user"), ("skip", "ignore"),
               ("tags", "multi_categorical", "user"), ("ad", "categorical")]


def test_csv_schema_groups_quotes_and_missing_values(tmp_path):
    lines = [
        "y,age,city,skip,tags,ad",
        '1,31.5,paris,zz,a|b,ad1',
        '0,,"lon,don",,,ad2',
        '1,2,"say ""hi""",q,|c||,',
        'oops,1,x,x,x,x',          # bad label
        '1,2,x,x,x',               # missing field
        '1,2,"open,x,x,x,x',       # broken quote
    ]
    path = write(tmp_path / "a.csv", lines, newline="\r\n")
    r = scd.CsvReader(path, CSV_COLUMNS, header=True, max_bad_fraction=1.0)
    b = read_all(r)
    assert b.num_samples == 3
    assert [m.line_number for m in r.malformed_lines] == [5, 6, 7]
    np.testing.assert_array_equal(b.labels, [1, 0, 1])
    np.testing.assert_array_equal(b.dense, [[31.5], [0.0], [2.0]])
    assert list(b.sparse) == ["user", "ad"]
    assert bags(b, "user") == [[ref_id("city", "paris"), ref_id("tags", "a"), ref_id("tags", "b")],
                               [ref_id("city", "lon,don")],
                               [ref_id("city", 'say "hi"'), ref_id("tags", "c")]]
    assert bags(b, "ad") == [[ref_id("ad", "ad1")], [ref_id("ad", "ad2")], []]


@pytest.mark.parametrize("columns, match", [
    ({}, "no columns"),
    ([("a", "label"), ("b", "label")], "label"),
    ([("a", "dense"), ("a", "dense")], "twice"),
    ([("a", "float")], "unknown type"),
    ([("", "dense")], "empty name"),
])
def test_csv_bad_schema_raises_value_error(tmp_path, columns, match):
    path = write(tmp_path / "a.csv", ["1"])
    with pytest.raises(ValueError, match=match):
        scd.CsvReader(path, columns)


def test_csv_delimiter_must_differ_from_separator(tmp_path):
    path = write(tmp_path / "a.csv", ["1"])
    with pytest.raises(ValueError, match="delimiter"):
        scd.CsvReader(path, [("y", "label")], delimiter="|")


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda p: scd.CriteoReader(p),
    lambda p: scd.LibsvmReader(p),
    lambda p: scd.LibffmReader(p, 2),
    lambda p: scd.CsvReader(p, [("y", "label")]),
])
def test_unreadable_file_raises_os_error_naming_it(tmp_path, make):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(OSError, match="nope.txt"):
        make(missing)
    with pytest.raises(OSError, match="[Dd]irectory"):
        make(str(tmp_path))


def test_bad_reader_options(tmp_path):
    path = write(tmp_path / "a.svm", ["1 1:1"])
    with pytest.raises(ValueError, match="num_threads"):
        scd.LibsvmReader(path, num_threads=0)
    with pytest.raises(ValueError, match="batch_size"):
        scd.LibsvmReader(path, batch_size=0)
    with pytest.raises(TypeError, match="unexpected"):
        scd.LibsvmReader(path, bogus=1)


# -- streaming, threads, positions ---------------------------------------------------------
@pytest.fixture
def criteo_files(tmp_path):
    rng = random.Random()
    paths = []
    for f in range(3):
        lines = []
        for _ in range(rng.randint(150, 260)):
            r = rng.random()
            lines.append("" if r < 0.03 else ("garbage" if r < 0.06 else criteo_line(rng)[0]))
        paths.append(write(tmp_path / f"part{f}.tsv", lines, newline=rng.choice(["\n", "\r\n"]),
                           trailing=rng.random() < 0.5))
    return paths


def assert_same_batch(a: scd.Batch, b: scd.Batch) -> None:
    assert a.num_samples == b.num_samples
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.dense, b.dense)
    for name in a.sparse:
        for x, y in zip(a.sparse[name], b.sparse[name]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("num_threads, block_bytes", [(1, 4 << 20), (3, 700), (2, 1)])
def test_output_is_independent_of_threads_and_block_size(criteo_files, num_threads, block_bytes):
    ref_reader = scd.CriteoReader(criteo_files, max_bad_fraction=1.0)
    ref = read_all(ref_reader, 64)
    r = scd.CriteoReader(criteo_files, num_threads=num_threads, block_bytes=block_bytes, prefetch_blocks=1,
                         max_bad_fraction=1.0)
    got = read_all(r, 37)
    assert_same_batch(ref, got)
    assert r.malformed_lines == ref_reader.malformed_lines and r.malformed_count == ref_reader.malformed_count
    assert r.position == (3, 0, 0)


def test_resume_from_saved_position_reads_each_sample_once(criteo_files):
    full_reader = scd.CriteoReader(criteo_files, block_bytes=900, num_threads=2, max_bad_fraction=1.0)
    full = read_all(full_reader, 50)
    rng = random.Random()
    reader = scd.CriteoReader(criteo_files, block_bytes=900, num_threads=2, max_bad_fraction=1.0)
    parts, malformed = [], 0
    while True:
        b = reader.next_batch(rng.randint(1, 120))
        if b is None:
            break
        parts.append(b)
        if rng.random() < 0.5:  # checkpoint, then continue in a brand-new reader
            state = reader.state_dict()
            malformed += reader.malformed_count
            reader = scd.CriteoReader(criteo_files, block_bytes=rng.choice([333, 4096]), max_bad_fraction=1.0)
            reader.load_state_dict(state)
    malformed += reader.malformed_count
    assert_same_batch(full, scd.concat_batches(parts))
    assert malformed == full_reader.malformed_count


def test_seek_rejects_positions_outside_the_files(criteo_files):
    r = scd.CriteoReader(criteo_files, max_bad_fraction=1.0)
    with pytest.raises(ValueError, match="file_index"):
        r.seek((4, 0, 0))
    with pytest.raises(ValueError, match="beyond"):
        r.seek((0, 10**9, 0))
    with pytest.raises(ValueError, match="start of a line"):
        r.seek((0, 3, 0))
    with pytest.raises(ValueError, match="'csv' source"):
        r.load_state_dict({"kind": "csv", "paths": criteo_files, "position": [0, 0, 0]})


def test_memory_stays_bounded_on_a_long_file(tmp_path):
    # 20k lines through 8 KiB blocks: the reader never holds more than a few blocks.
    rng = random.Random(5)
    line = criteo_line(rng)[0]
    path = write(tmp_path / "long.tsv", [line] * 20000)
    r = scd.CriteoReader(path, block_bytes=8192, prefetch_blocks=1, batch_size=1000, max_bad_fraction=1.0)
    n = sum(b.num_samples for b in r)
    assert n == 20000 and r.position == (1, 0, 0)


# -- Parquet -------------------------------------------------------------------------------
def test_parquet_matches_csv_ids_and_resumes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng()
    n = 301
    y = rng.integers(0, 2, n).astype(float)
    y[[5, 77]] = np.nan  # null labels: skipped and counted
    age = rng.normal(size=n)
    city = [None if rng.random() < 0.1 else f"c{int(rng.integers(50))}" for _ in range(n)]
    shop = rng.integers(0, 1000, n)
    tags = [None if rng.random() < 0.1 else [f"t{int(t)}" for t in rng.integers(0, 9, int(rng.integers(0, 4)))]
            for _ in range(n)]
    table = pa.table({"y": pa.array(y, from_pandas=True), "age": age, "city": city, "shop": shop, "tags": tags})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=50)
    columns = [("y", "label"), ("age", "dense"), ("city", "categorical", "user"), ("tags", "multi_categorical", "user"),
               ("shop", "categorical")]
    r = scd.ParquetReader(tmp_path / "a.parquet", columns, batch_size=64)
    b = read_all(r)
    keep = [i for i in range(n) if not np.isnan(y[i])]
    assert b.num_samples == n - 2 and r.malformed_count == 2
    assert [m.line_number for m in r.malformed_lines] == [6, 78]
    np.testing.assert_array_equal(b.labels, y[keep].astype(np.float32))
    np.testing.assert_allclose(b.dense[:, 0], age[keep].astype(np.float32))
    expected_user = [([ref_id("city", city[i])] if city[i] else []) + [ref_id("tags", t) for t in (tags[i] or [])]
                     for i in keep]
    assert bags(b, "user") == expected_user
    assert bags(b, "shop") == [[ref_id("shop", str(shop[i]))] for i in keep]

    # resume: any split point, a fresh reader
    r1 = scd.ParquetReader(tmp_path / "a.parquet", columns, batch_size=64)
    first = r1.next_batch(int(rng.integers(1, 200)))
    r2 = scd.ParquetReader(tmp_path / "a.parquet", columns, batch_size=37)
    r2.load_state_dict(r1.state_dict())
    assert_same_batch(b, scd.concat_batches([first, read_all(r2)]))


def test_parquet_bad_input(tmp_path):
    pytest.importorskip("pyarrow")
    with pytest.raises(OSError, match="nope.parquet"):
        scd.ParquetReader(tmp_path / "nope.parquet", [("y", "label")])
    bad = write(tmp_path / "text.parquet", ["not parquet"])
    with pytest.raises(OSError, match="text.parquet"):
        scd.ParquetReader(bad, [("y", "label")])
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"y": [1.0]}), tmp_path / "ok.parquet")
    with pytest.raises(ValueError, match="lacks"):
        scd.ParquetReader(tmp_path / "ok.parquet", [("y", "label"), ("z", "dense")])


# -- compressed input ------------------------------------------------------------------------
def gzip_copy(src: str, dst, members: int = 1) -> str:
    data = open(src, "rb").read()
    cut = [len(data) * k // members for k in range(members + 1)]
    with open(dst, "wb") as f:
        for a, b in zip(cut, cut[1:]):  # concatenated members read as one stream, as zcat does
            f.write(gzip.compress(data[a:b]))
    return str(dst)


@pytest.mark.parametrize("members", [1, 3])
def test_gzip_files_read_like_the_plain_ones_and_resume(criteo_files, tmp_path, members):
    packed = [gzip_copy(p, tmp_path / f"{os.path.basename(p)}.gz", members) for p in criteo_files]
    plain_reader = scd.CriteoReader(criteo_files, max_bad_fraction=1.0)
    plain = read_all(plain_reader, 41)
    r = scd.CriteoReader(packed, block_bytes=500, max_bad_fraction=1.0)
    first = r.next_batch(100)
    state = r.state_dict()
    resumed = scd.CriteoReader(packed, max_bad_fraction=1.0)
    resumed.load_state_dict(state)
    assert_same_batch(plain, scd.concat_batches([first, read_all(resumed, 29)]))
    assert resumed.position == (3, 0, 0)
    whole = scd.CriteoReader(packed, max_bad_fraction=1.0)
    read_all(whole)
    assert [(os.path.basename(m.path), m.line_number, m.reason) for m in whole.malformed_lines] == \
        [(os.path.basename(m.path) + ".gz", m.line_number, m.reason) for m in plain_reader.malformed_lines]


def test_a_damaged_gzip_file_is_corrupt_data_naming_it(criteo_files, tmp_path):
    packed = gzip_copy(criteo_files[0], tmp_path / "a.gz")
    data = bytearray(open(packed, "rb").read())
    data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)
    open(packed, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=r"gzip: '.*a\.gz'"):
        read_all(scd.CriteoReader(packed, max_bad_fraction=1.0))
    truncated = tmp_path / "t.gz"
    truncated.write_bytes(gzip.compress(b"1\t" * 100)[:-20])
    with pytest.raises(ValueError, match="ends in the middle"):
        read_all(scd.CriteoReader(str(truncated), max_bad_fraction=1.0))


def test_zstd_files_are_refused_with_a_hint(tmp_path):
    path = tmp_path / "day.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    with pytest.raises(OSError, match="zstd-compressed.*zstd -d"):
        scd.CriteoReader(str(path))


# -- data that is not what the format says -----------------------------------------------------
def test_no_line_parsing_is_an_error_naming_the_first_line(tmp_path):
    path = write(tmp_path / "x.tsv", ["", "1\t2\t3\t4", "a,b,c"])
    from sparsecore import CorruptDataError

    with pytest.raises(CorruptDataError, match=r"no line of the data parses \(2 malformed\); first: .*x\.tsv:2: "
                             r"expected 40 fields, found 4 \(tab-separated\)"):
        scd.CriteoReader(path).next_batch()


def test_malformed_fraction_is_judged_mid_stream_once_enough_lines_were_read(tmp_path):
    rng = random.Random()
    lines = [criteo_line(rng)[0] if i % 20 else "bad" for i in range(1, 5001)]  # 5 % malformed
    path = write(tmp_path / "noisy.tsv", lines)
    r = scd.CriteoReader(path, batch_size=100)
    with pytest.raises(ValueError, match=r"lines read are malformed, more than max_bad_fraction 0.01 allows; "
                                         r"first: .*noisy\.tsv:20: expected 40 fields, found 1"):
        read_all(r)
    assert r.samples_read < 1200  # stopped early, not after the whole file
    tolerant = scd.CriteoReader(path, batch_size=100, max_bad_fraction=0.06)
    assert read_all(tolerant).num_samples == 4750 and tolerant.malformed_count == 250


def test_a_few_malformed_lines_below_the_fraction_are_skipped(tmp_path):
    rng = random.Random()
    lines = [criteo_line(rng)[0] for _ in range(300)]
    lines[7] = "oops"
    r = scd.CriteoReader(write(tmp_path / "ok.tsv", lines))
    assert read_all(r).num_samples == 299 and r.malformed_count == 1


def test_bad_max_bad_fraction(tmp_path):
    path = write(tmp_path / "a.tsv", [criteo_line(random.Random())[0]])
    with pytest.raises(ValueError, match="max_bad_fraction must be in"):
        scd.CriteoReader(path, max_bad_fraction=1.5)


def test_criteo_counts_fields_before_reading_them(tmp_path):
    rng = random.Random()
    good = criteo_line(rng)[0]
    path = write(tmp_path / "c.tsv", [good.replace("\t", ",")] + ["\t".join(good.split("\t") + ["x"])] + [good] * 3)
    r = scd.CriteoReader(path, max_bad_fraction=1.0)
    read_all(r)
    assert [m.reason for m in r.malformed_lines] == ["expected 40 fields, found 1 (tab-separated)",
                                                     "expected 40 fields, found 41 (tab-separated)"]


# -- CSV / TSV headers -----------------------------------------------------------------------
def test_csv_header_names_the_columns_the_schema_picks(tmp_path):
    a = write(tmp_path / "a.tsv", ["ts\tuser\tclicked\tprice", "5\tu1\t1\t2.5", "6\tu2\t0\t"])
    r = scd.CsvReader(a, {"clicked": "label", "user": "categorical", "price": "dense"}, delimiter="\t", header=True)
    assert [(c.name, c.type) for c in r.columns] == [("ts", "ignore"), ("user", "categorical"),
                                                   ("clicked", "label"), ("price", "dense")]
    b = read_all(r)
    np.testing.assert_array_equal(b.labels, [1, 0])
    np.testing.assert_array_equal(b.dense[:, 0], [2.5, 0])
    assert bags(b, "user") == [[ref_id("user", "u1")], [ref_id("user", "u2")]]


def test_csv_header_mismatches_are_errors(tmp_path):
    a = write(tmp_path / "a.csv", ["y,user", "1,u"])
    with pytest.raises(ValueError, match=r"columns \['usr'\] are not in the header of .*a\.csv', which names y, user"):
        scd.CsvReader(a, {"y": "label", "usr": "categorical"}, header=True)
    with pytest.raises(ValueError, match="delimiter"):
        scd.CsvReader(a, {"y": "label", "user": "categorical"}, header=True, delimiter="\t")
    b = write(tmp_path / "b.csv", ["y,user,extra", "1,u,2"])
    with pytest.raises(ValueError, match="differs from that of"):
        scd.CsvReader([a, b], {"y": "label"}, header=True)
    with pytest.raises(ValueError, match="no header line"):
        scd.CsvReader(write(tmp_path / "e.csv", []), {"y": "label"}, header=True)


def test_csv_header_of_a_gzip_file(tmp_path):
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(b"user,y\nu1,1\nu2,0\n"))
    b = read_all(scd.CsvReader(str(path), {"y": "label"}, header=True))
    np.testing.assert_array_equal(b.labels, [1, 0])


# -- epochs and shuffling ----------------------------------------------------------------------
def labelled_files(tmp_path, counts):
    """Files whose samples carry their global index as the dense value."""
    paths, i = [], 0
    for k, n in enumerate(counts):
        paths.append(write(tmp_path / f"f{k}.csv", [f"{j % 2},{j}" for j in range(i, i + n)]))
        i += n
    return paths


def indices(batches) -> list[int]:
    return [int(v) for b in batches for v in b.dense[:, 0]]


def epochs_source(paths, **kw):
    return scd.Epochs(lambda p: scd.CsvReader(p, [("y", "label"), ("i", "dense")], batch_size=7), paths, **kw)


def test_epochs_read_every_sample_once_per_epoch_in_order(tmp_path):
    paths = labelled_files(tmp_path, [10, 0, 13])
    got = indices(epochs_source(paths, epochs=3))
    assert got == list(range(23)) * 3


def test_shuffle_permutes_within_windows_and_file_order_per_epoch_seeded(tmp_path):
    paths = labelled_files(tmp_path, [30, 30, 30])
    src = epochs_source(paths, epochs=2, shuffle=True, shuffle_buffer=16, seed=5)
    batches = list(src)
    got = indices(batches)
    assert sorted(got[:90]) == list(range(90)) and sorted(got[90:]) == list(range(90))
    assert got[:90] != list(range(90)) and got[:90] != got[90:]
    assert all(b.num_samples == 7 for b in batches[:12])  # full batches across window ends
    assert got == indices(epochs_source(paths, epochs=2, shuffle=True, shuffle_buffer=16, seed=5))
    assert got != indices(epochs_source(paths, epochs=2, shuffle=True, shuffle_buffer=16, seed=6))
    orders = {tuple(src.file_order(e)) for e in range(8)}
    assert len(orders) > 1 and all(sorted(o) == sorted(paths) for o in orders)


@pytest.mark.parametrize("shuffle", [False, True])
def test_epochs_resume_exactly_from_a_saved_state(tmp_path, shuffle):
    paths = labelled_files(tmp_path, [17, 25])
    kw = dict(epochs=3, shuffle=shuffle, shuffle_buffer=10, seed=1)
    full = indices(epochs_source(paths, **kw))
    rng = random.Random()
    src, got = epochs_source(paths, **kw), []
    while (b := src.next_batch(rng.randint(1, 9))) is not None:
        got += indices([b])
        if rng.random() < 0.4:
            state = src.state_dict()
            src = epochs_source(paths, **kw)
            src.load_state_dict(state)
    assert got == full


def test_epochs_bad_arguments(tmp_path):
    paths = labelled_files(tmp_path, [3])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        epochs_source(paths, epochs=0)
    with pytest.raises(ValueError, match="shuffle_buffer must be >= 1"):
        epochs_source(paths, shuffle=True, shuffle_buffer=0)
    state = epochs_source(paths, shuffle=True).state_dict()
    with pytest.raises(ValueError, match="seed"):
        epochs_source(paths, shuffle=True, seed=3).load_state_dict(state)


def test_batch_take_gathers_samples_in_any_order(tmp_path):
    path = write(tmp_path / "m.csv", ["1,a|b,1.5", "0,,2.5", "1,c,3.5"])
    b = read_all(scd.CsvReader(path, [("y", "label"), ("t", "multi_categorical"), ("x", "dense")]))
    t = b.take(np.array([2, 0, 0, 1]))
    assert bags(t, "t") == [bags(b, "t")[i] for i in (2, 0, 0, 1)]
    np.testing.assert_array_equal(t.labels, b.labels[[2, 0, 0, 1]])
    with pytest.raises(ValueError, match="indices"):
        b.take(np.array([3]))
