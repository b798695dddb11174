"""Why a packet was dropped.

Every failure in the per-packet path is one of these reasons, returned to the
caller (never raised) so it can be counted.  The names are the label values of
the ``ipsecd_drops_total{reason=...}`` metric, so they are stable API: add new
reasons at the end, never renumber.
"""

from __future__ import annotations

from enum import IntEnum


class Drop(IntEnum):
    """A named reason for dropping a packet; ``OK`` (0) means it was not dropped."""

    OK = 0
    RUNT = 1  # shorter than the headers and trailer it claims to have
    UNKNOWN_SPI = 2  # no SA for this SPI / protocol / destination
    REPLAY = 3  # sequence number already seen or left of the window
    ICV = 4  # integrity check (or AEAD tag) failed
    PADDING = 5  # pad length too large or pad bytes not 1, 2, 3, ... (RFC 4303 §2.4)
    BAD_NEXT_HEADER = 6  # next header not one the mode can deliver
    DUMMY = 7  # next header 59: traffic-flow-confidentiality dummy packet (RFC 4303 §2.6)
    MALFORMED = 8  # IP / UDP header inconsistent with the packet
    DECOMPRESS = 9  # IPComp payload would not decompress
    POLICY_MISMATCH = 10  # decapsulated packet not allowed by the SA's / SPD's selectors
    NO_SA = 11  # outbound: policy requires IPsec but no SA is installed
    SEQ_OVERFLOW = 12  # outbound: sequence number space exhausted, the SA must be rekeyed
    MTU = 13  # outbound: too big after encapsulation and DF set
    RING_FULL = 14  # datapath: no room in a ring
    EXPIRED = 15  # SA reached its hard lifetime
    DISCARD = 16  # SPD says discard
    ECN = 17  # tunnel decapsulation: outer CE over a Not-ECT inner packet (RFC 6040 §4.2)
    # Reassembly of fragmented outer packets (workers/reassembly.py); these count fragments.
    FRAGMENT_TIMEOUT = 18  # the datagram did not complete in time (RFC 791, RFC 8200 §4.5)
    FRAGMENT_OVERLAP = 19  # the datagram had overlapping fragments: all of it goes (RFC 5722)
    FRAGMENT_LIMIT = 20  # evicted: too many datagrams or bytes in reassembly
    FRAGMENT_MALFORMED = 21  # bad lengths, offset, size, checksum; or inconsistent last fragments
    FRAGMENT_DUPLICATE = 22  # an exact copy of a fragment already held (RFC 8200 §4.5)
    TUN_WRITE = 23  # inbound: the kernel refused the decrypted packet written to the TUN

    @property
    def label(self) -> str:
        """The metric label value: the lower-case name."""
        return self.name.lower()
