"""A sweep's folder, local or in a bucket: where it is and its saved ``sweep.yaml``."""

from __future__ import annotations

from pathlib import Path

from neuroreg.config import ConfigError

SPEC_FILE = "sweep.yaml"


def sweep_folder(storage: str, name: str) -> str:
    """The sweep's folder or URI; a URI keeps its query last (s3://b/p/NAME?endpoint_override=...),
    so pyarrow and Tune reach the same endpoint."""
    if "://" not in storage:
        return str(Path(storage) / name)
    base, sep, query = storage.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def read_saved_spec(storage: str, name: str, flag: str = "--name"):
    """The sweep's saved sweep.yaml, parsed with the same guards as a --space file."""
    from neuroreg.yamlio import MAX_FILE_BYTES, parse_yaml_bytes, read_yaml_file

    if "://" in storage:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(storage)
        try:
            with fs.open_input_stream(f"{root}/{name}/{SPEC_FILE}") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigError(flag, f"no {SPEC_FILE} of sweep {name!r} in {storage} ({e}); check {flag} and --storage") from None
        return parse_yaml_bytes(data, f"{storage}/{name}/{SPEC_FILE}", flag, "saved sweep file")
    path = Path(storage) / name / SPEC_FILE
    if not path.is_file():
        raise ConfigError(flag, f"{path.parent} is no sweep of this tool (no {SPEC_FILE}); check {flag} and --storage")
    return read_yaml_file(path, flag, "saved sweep file")


def write_saved_spec(storage: str, name: str, text: str) -> str:
    """Write sweep.yaml in one step (a temp file or key, then a rename): --resume depends on it."""
    if "://" in storage:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(storage)
        fs.create_dir(f"{root}/{name}", recursive=True)
        tmp = f"{root}/{name}/.{SPEC_FILE}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        fs.move(tmp, f"{root}/{name}/{SPEC_FILE}")
        return f"{storage.rstrip('/')}/{name}/{SPEC_FILE}"
    from neuroreg.atomic import atomic_write_text

    return str(atomic_write_text(Path(storage) / name / SPEC_FILE, text))
