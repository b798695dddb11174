"""ipsecd: a userspace IPsec gateway for Linux.

The package is the control plane: the SPD and SAD, the setkey(8) language,
the ESP/AH/IPComp codecs and (later) IKE.  Packet work happens in ``workers``;
metrics export lives in ``metrics``.
"""

__version__ = "0.1.0"
