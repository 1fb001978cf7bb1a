#!/usr/bin/env python3
"""Write a gzip-compressed newc ("070701") cpio archive for a Linux initramfs.

No cpio tool and no root needed: device nodes are written straight into the
archive headers. The output is reproducible (all mtimes 0, fixed owner root).

Usage:
  mkcpio.py OUTPUT.cpio.gz ENTRY...

ENTRY is one of
  dir:NAME[:MODE]                 directory            (default mode 0755)
  file:NAME=SOURCE[:MODE]         regular file copied from SOURCE (default 0755)
  chr:NAME=MAJOR,MINOR[:MODE]     character device     (default mode 0600)

Example (what scripts/build-guest.sh writes):
  mkcpio.py guest/out/initramfs.cpio.gz dir:dev dir:proc chr:dev/console=5,1 \
      file:init=guest/out/init
"""

import gzip
import os
import stat
import sys

def header(ino, mode, nlink, size, rdev_major, rdev_minor, name):
    encoded = name.encode() + b"\0"
    fields = [
        ino,          # c_ino
        mode,         # c_mode
        0,            # c_uid
        0,            # c_gid
        nlink,        # c_nlink
        0,            # c_mtime
        size,         # c_filesize
        0,            # c_devmajor
        0,            # c_devminor
        rdev_major,   # c_rdevmajor
        rdev_minor,   # c_rdevminor
        len(encoded), # c_namesize (including the NUL)
        0,            # c_check
    ]
    out = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    return out + pad4(len(out))


def pad4(length):
    return b"\0" * (-length % 4)


def parse_mode(text, default):
    return int(text, 8) if text else default


def fail(message):
    print("mkcpio: error: " + message, file=sys.stderr)
    sys.exit(1)


def build(entries):
    chunks = []
    seen = set()
    for ino, spec in enumerate(entries, start=1):
        kind, _, rest = spec.partition(":")
        if kind == "dir":
            name, _, mode = rest.partition(":")
            record = header(ino, stat.S_IFDIR | parse_mode(mode, 0o755), 2, 0, 0, 0, name)
            data = b""
        elif kind == "file":
            name, _, source = rest.partition("=")
            source, _, mode = source.partition(":")
            try:
                with open(source, "rb") as f:
                    data = f.read()
            except OSError as err:
                fail("cannot read %s: %s" % (source, err))
            record = header(ino, stat.S_IFREG | parse_mode(mode, 0o755), 1, len(data), 0, 0, name)
        elif kind == "chr":
            name, _, numbers = rest.partition("=")
            numbers, _, mode = numbers.partition(":")
            try:
                major, minor = (int(n) for n in numbers.split(","))
            except ValueError:
                fail("bad device numbers in %r (want MAJOR,MINOR)" % spec)
            record = header(ino, stat.S_IFCHR | parse_mode(mode, 0o600), 1, 0, major, minor, name)
            data = b""
        else:
            fail("unknown entry %r (want dir:, file: or chr:)" % spec)
        if not name or name.startswith("/") or name in seen:
            fail("bad or duplicate name in %r" % spec)
        # The kernel does not create missing parents: they must come first.
        parent = os.path.dirname(name)
        if parent and parent not in seen:
            fail("%r comes before its directory %r" % (name, parent))
        seen.add(name)
        chunks.append(record + data + pad4(len(data)))
    chunks.append(header(0, 0, 1, 0, 0, 0, "TRAILER!!!"))
    return b"".join(chunks)


def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    output = argv[1]
    archive = build(argv[2:])
    temporary = output + ".tmp.%d" % os.getpid()
    try:
        with open(temporary, "wb") as raw:
            # mtime=0 and no file name in the gzip header: byte-identical rebuilds.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
                gz.write(archive)
        os.replace(temporary, output)
    except OSError as err:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        fail("cannot write %s: %s" % (output, err))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
