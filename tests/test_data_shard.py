"""Data sharding: worker index of count reads a disjoint part of the files (whole files, or a
range of whole lines of one file), the parts together are all the data, and the part is part
of the reader's state."""

import gzip

import numpy as np
import pytest

from sparsecore.data import LibsvmReader
from sparsecore.data.shard import shard_parts


def write_files(tmp_path, lines_per_file, gz=False):
    """libsvm files whose line k (over all files) has the single feature id k."""
    paths, k = [], 0
    for f, n in enumerate(lines_per_file):
        text = "".join(f"{(k + i) % 2} {k + i}:1\n" for i in range(n))
        k += n
        path = tmp_path / f"part-{f}.libsvm{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        paths.append(str(path))
    return paths, k


def ids_read(reader, batch_size=7):
    out = []
    while (b := reader.next_batch(batch_size)) is not None:
        out.extend(np.asarray(b.sparse["features"][0]).tolist())
    return out


@pytest.mark.parametrize("lines_per_file", [[1], [50], [13, 0, 29], [40, 41, 1, 7]])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_the_shards_are_disjoint_and_together_all_the_lines(tmp_path, lines_per_file, count):
    paths, total = write_files(tmp_path, lines_per_file)
    seen = []
    for index in range(count):
        seen.extend(ids_read(LibsvmReader(paths, shard=(index, count), block_bytes=64)))
    assert sorted(seen) == list(range(total))


def test_fewer_files_than_workers_cuts_a_file_into_line_ranges_in_order(tmp_path):
    paths, total = write_files(tmp_path, [100])
    parts = [ids_read(LibsvmReader(paths, shard=(i, 3))) for i in range(3)]
    assert all(p == sorted(p) and p for p in parts)
    assert parts[0][-1] < parts[1][0] and parts[1][-1] < parts[2][0]
    assert sum(parts, []) == list(range(total))


def test_at_least_as_many_files_as_workers_gives_whole_files(tmp_path):
    paths, _ = write_files(tmp_path, [3, 4, 5, 6, 7])
    assert [p.path for p in shard_parts(paths, (1, 2))] == [paths[1], paths[3]]
    assert all(p.whole for p in shard_parts(paths, (1, 2)))


def test_the_state_records_the_shard_and_resumes_within_it(tmp_path):
    paths, _ = write_files(tmp_path, [60, 5])
    reader = LibsvmReader(paths, shard=(2, 4), batch_size=4)
    first = ids_read_n(reader, 2)
    state = reader.state_dict()
    assert state["shard"]["index"] == 2 and state["shard"]["count"] == 4
    rest = ids_read(reader)
    again = LibsvmReader(paths, shard=(2, 4), batch_size=4)
    again.load_state_dict(state)
    assert ids_read(again) == rest
    assert first + rest == ids_read(LibsvmReader(paths, shard=(2, 4)))
    with pytest.raises(ValueError, match="shard"):
        LibsvmReader(paths, shard=(1, 4)).load_state_dict(state)
    with pytest.raises(ValueError, match="shard"):
        LibsvmReader(paths[:1]).load_state_dict(state)


def ids_read_n(reader, batches):
    out = []
    for _ in range(batches):
        out.extend(np.asarray(reader.next_batch().sparse["features"][0]).tolist())
    return out


def test_compressed_files_are_sharded_by_file_only(tmp_path):
    paths, total = write_files(tmp_path, [10, 12], gz=True)
    assert sorted(ids_read(LibsvmReader(paths, shard=(0, 2))) + ids_read(LibsvmReader(paths, shard=(1, 2)))) == \
        list(range(total))
    with pytest.raises(ValueError, match="compressed"):
        LibsvmReader(paths, shard=(2, 3))


@pytest.mark.parametrize("shard, error", [((2, 2), ValueError), ((-1, 2), ValueError), ((0, 0), ValueError),
                                          ((0.0, 2), TypeError), (3, TypeError), ((True, 2), TypeError)])
def test_a_bad_shard_is_refused(tmp_path, shard, error):
    paths, _ = write_files(tmp_path, [5])
    with pytest.raises(error):
        LibsvmReader(paths, shard=shard)
