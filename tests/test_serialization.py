def test_atomic_write_permissions_and_cleanup(tmp_path) -> None:
    import os
    import stat

    from collapsekit.serialization import atomic_write, write_json

    p = write_json({"a": 1}, tmp_path / "sub" / "x.json")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert p.read_text() == '{\n  "a": 1\n}\n'
    try:
        with atomic_write(p) as f:
            f.write("half")
            raise OSError(28, "No space left on device")
    except OSError:
        pass
    assert p.read_text() == '{\n  "a": 1\n}\n'  # the old file is intact
    assert sorted(x.name for x in p.parent.iterdir()) == ["x.json"]  # no temporary left
