import json
import os
import threading

from keras_pnil import files


def test_atomic_writes_leave_one_whole_file_and_no_temporaries(tmp_path):
    path = tmp_path / "result.json"
    files.atomic_write_json(path, {"a": 1})
    assert files.read_json(path) == {"a": 1}
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as `open` would make it, not mkstemp's 0600
    # Writers of the same file do not share a temporary name, so each rename carries a whole file.
    texts = [json.dumps({"writer": i, "pad": "x" * 100_000}) for i in range(8)]
    threads = [threading.Thread(target=files.atomic_write_text, args=(path, t)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
