"""Accept/reject table for allowed_hostnames normalisation."""

import pytest

from simulator.errors import InvalidRequest
from simulator.hostnames import normalise_pattern, normalise_patterns


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("github.com", "github.com"),
        ("GitHub.COM", "github.com"),
        ("github.com.", "github.com"),
        ("*.npmjs.org", "*.npmjs.org"),
        ("*.NPMJS.org.", "*.npmjs.org"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("localhost", "localhost"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("*.bücher.de", "*.xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("XN--BCHER-KVA.de", "xn--bcher-kva.de"),
        ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com"),  # valid Cyrillic, if a homograph
        ("*.XN--LS8H.la", "*.xn--ls8h.la"),  # an emoji domain (IDNA 2003): real, resolves by this name
        ("Ꭰ.com", "xn--58d.com"),  # Cherokee: its upper case is the mapped form
        ("xn--58d.com", "xn--58d.com"),
        # IDNA 2008 (UTS-46 non-transitional), as browsers: not IDNA 2003's fass.de / strasse.de
        ("faß.de", "xn--fa-hia.de"),
        ("*.Straße.de", "*.xn--strae-oqa.de"),
        ("ｅｘａｍｐｌｅ.com", "example.com"),  # full-width letters are these letters
        ("münchen.de.", "xn--mnchen-3ya.de"),
        ("1password.com", "1password.com"),
        # "_" is a DNS name character (not a hostname one): TXT/SRV owners, some hosts' names
        ("_dmarc.Example.com", "_dmarc.example.com"),
        ("*._tcp.example.com", "*._tcp.example.com"),
        ("git_hub.com", "git_hub.com"),
        ("a_.b_c._", "a_.b_c._"),
        ("ｇｉｔ_hub.com", "git_hub.com"),  # a name with "_" still gets the UTS-46 mapping
        ("_x.bücher.de", "_x.xn--bcher-kva.de"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 49] * 5), ".".join(["a" * 49] * 5)),  # 249 characters
    ],
)
def test_accepts(raw, expected):
    assert normalise_pattern(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "*",
        "*.",
        ".",
        "**.example.com",
        "*example.com",
        "a.*.example.com",
        "example.*",
        "ex*ample.com",
        "http://github.com",
        "github.com/x",
        "github.com:443",
        "192.0.2.1",
        "[2001:db8::1]",
        "2001:db8::1",
        "10.0.0.0/8",
        "git hub.com",
        " github.com",
        "github..com",
        ".github.com",
        "-github.com",
        "github-.com",
        "_-.com",  # hyphens still only inner
        "bü_cher.de",  # IDNA 2008 labels hold no "_"
        "xn--a.com",  # punycode of U+0080
        "xn--zz.com",  # no punycode at all
        "xn--abc-.com",  # punycode of plain ASCII: not an internationalised label
        "xn--wca.com",  # "Ü": a name is lower case (xn--tda is "ü")
        "xn--py1h.com",  # U+1D400, a bold A: UTS-46 maps it to "a"
        "xn--a-wbb.com",  # a label starting with a combining mark
        "xn--a-xbb.com",  # not NFC ("a" then a combining acute)
        "_bücher.de",
        "*_.example.com",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4) + ".com",  # > 253 characters
        "example.123",
        "github.com..",
        "☃.net",  # symbols are no IDNA 2008 labels
        "a.\u0301b.com",  # a label may not start with a combining mark
        "bücher..de",
    ],
)
def test_rejects(raw):
    with pytest.raises(InvalidRequest):
        normalise_pattern(raw)


@pytest.mark.parametrize("raw", [None, 5, ["a.com"], {"a": 1}])
def test_rejects_non_strings(raw):
    with pytest.raises(InvalidRequest, match="expected a string"):
        normalise_pattern(raw)


def test_duplicates_dropped_in_order():
    assert normalise_patterns(["b.com", "A.com", "B.COM.", "a.com"]) == ("b.com", "a.com")


def test_error_names_the_index():
    with pytest.raises(InvalidRequest, match=r"allowed_hostnames\[1\]"):
        normalise_patterns(["ok.com", "not ok"])


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        ("192.0.2.1", "use allowed_cidrs with a /32"),
        ("2001:db8::1", "IPv4-only"),
        ("[2001:db8::1]", "IPv4-only"),
        ("::1", "IPv4-only"),
    ],
)
def test_an_address_gets_the_advice_that_fits_its_family(raw, hint):
    with pytest.raises(InvalidRequest, match="IP addresses are not hostnames") as caught:
        normalise_pattern(raw)
    assert hint in caught.value.message
    assert ("/32" in caught.value.message) == (":" not in raw)
