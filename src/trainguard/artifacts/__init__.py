"""Safe, bounded readers: format sniffing, exact reads, zip/tar/compressed containers.

    >>> from trainguard.artifacts.sniff import sniff, Format
    >>> sniff(b"PK\\x03\\x04" + bytes(60), 64) is Format.ZIP
    True
"""
