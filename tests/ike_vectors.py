"""Published IKEv2 messages and keys shared by the tests/test_ike_*.py files.

Every constant names its source.  None was produced by ipsecd.
"""

from __future__ import annotations


def h(text: str) -> bytes:
    """Bytes from hex written with spaces and line breaks, as RFCs print it."""
    return bytes.fromhex("".join(text.split()))


# Wireshark's test capture ikev2-decrypt-aes128ccm12.pcap (wireshark/wireshark,
# test/captures/), frames as embedded in scapy's test/contrib/ikev2.uts; only the
# UDP payload is kept here.  The frames' IPv4 and UDP checksums verify, so the
# transcription is exact.  Initiator 192.168.1.2:500, responder 192.168.1.14:500.
CAPTURE_INITIATOR = "192.168.1.2"
CAPTURE_RESPONDER = "192.168.1.14"
CAPTURE_SA_INIT_REQUEST = h("""
ea684d21597afd3600000000000000002120220800000000000000f82200002800000024010100030300000c0100000f
800e008003000008020000050000000804000013280000480013000032c6dffe5c43b0d5811f7eaaa84c9f78bf99b906
9c2b072e0b82f46bf6f66dd45f97ef89ee285fd5df527a44776b529fc9d8a909d842a6fb59b96a095395617229000024
b655462d6f4b66f872ccd7f0f4b4857732921339cbaa5237edba244f262b68232900001c00004004949c9db5739d75a9
74a49c184618369b34b7f9422900001c000040053e721b46be07d53111425d7f80d2c6e220c6072e000000100000402f
0001000200030004""")
CAPTURE_SA_INIT_RESPONSE = h("""
ea684d21597afd36d9fe2ab22dac23ac2120222000000000000000f02200002800000024010100030300000c0100000f
800e00800300000802000005000000080400001328000048001300002c66beadb6ce8535d6218cb401aa5a1eb4035b97
caddaf36374a979c0446b8800506bf9d6f950952326bf3011913da93bb8e40f815376be1a06801c0a63e3b5429000024
9e5d267379e681e7d38d81c710d383401de7e3607b926d90a9958adcb52831aa2900001c000040047a0785273d592038
29a697550f31cbb94eb72b432900001c00004005c3e58a8cc9933ce0b78f2a50e8de80134e12ce310000000800004014""")
# INFORMATIONAL exchange (message ID 2) of the same capture: a Delete of the IKE SA and its reply.
CAPTURE_INFORMATIONAL_REQUEST = h("""
ea684d21597afd36d9fe2ab22dac23ac2e202508000000020000003d2a000021cca0b35de5abc51c9987cbf1f5ecff21
0eb767cdb85179383b964d78e2""")
CAPTURE_INFORMATIONAL_RESPONSE = h("""
ea684d21597afd36d9fe2ab22dac23ac2e202520000000020000003500000019a80c957bac15c3f8afdf315a81cc4b7c
40e8660d44""")
# The keys of that IKE SA, from Wireshark's test/config/ikev2_decryption_table.tmpl
# (SPIi ea684d21597afd36, SPIr d9fe2ab22dac23ac, "AES-CCM-128 with 12 octet ICV [RFC5282]",
# integrity NONE): SK_e is the 16-octet key followed by the 3-octet salt.
CAPTURE_SK_EI = h("be83fe15f6a9976941870830fe26c014b863b3")
CAPTURE_SK_ER = h("79e0f4476861a76e64329e787b1c4ff38d732f")
