"""AtomicFile, the project's one atomic writer. Its own module, free of torch, so the scripts that
only write logs or data files (validate, reset, the data generators) start without loading torch."""
import os
import shutil


class AtomicFile:
    """The project's one atomic writer: build the new `dst` at `<dst>.tmp.<pid>` in the same
    folder (one filesystem: the rename is atomic), fsync, and rename it over `dst` on success
    only; on any failure the temp is removed. A reader of a file sees the old `dst` or the whole
new one.

    `with AtomicFile(dst) as f`: f is the temp file, opened "wb".
    `with AtomicFile(dst, directory=True) as tmp`: tmp is an empty temp directory to fill (a
    model dir with several files); an existing `dst` directory is removed just before the
    rename, since a rename cannot replace a non-empty directory. So directory mode is NOT
    atomic: between that removal and the rename there is no `dst`, and if the rename fails the
    old directory is gone (the new one is never left half-built).
    """

    def __init__(self, dst, directory: bool = False):
        self.dst = os.fspath(dst)
        self.tmp = f"{self.dst.rstrip('/')}.tmp.{os.getpid()}"
        self.directory = directory

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.dst)), exist_ok=True)
        if self.directory:
            shutil.rmtree(self.tmp, ignore_errors=True)   # left by a killed run with our pid
            os.makedirs(self.tmp)
            return self.tmp
        self.f = open(self.tmp, "wb")
        return self.f

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self.directory:
                if exc_type is None:
                    self.f.flush()
                    os.fsync(self.f.fileno())
                self.f.close()
            if exc_type is None:
                if self.directory and os.path.isdir(self.dst):
                    shutil.rmtree(self.dst)
                os.replace(self.tmp, self.dst)
        finally:
            # whatever failed (the write, the flush, the rename), no temp is left behind and dst
            # is either the old one or the whole new one
            if self.directory:
                shutil.rmtree(self.tmp, ignore_errors=True)
            elif os.path.exists(self.tmp):
                os.remove(self.tmp)
        return False
