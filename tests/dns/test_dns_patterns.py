"""HostnameMatcher: exact and wildcard patterns, accept/reject tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dns.patterns import HostnameMatcher, normalise_name, validate_pattern


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("example.com", "example.com"),
        (".", ""),
        ("", ""),
        ("a.b.", "a.b"),
        ("a.b..", "a.b."),  # exactly one trailing dot is stripped
    ],
)
def test_normalise_name(name, expected):
    assert normalise_name(name) == expected


POLICY = ["api.example.com", "*.example.com", "GitHub.com", "*.deep.corp.internal", "exact.only.org."]

ACCEPT = [
    ("api.example.com", "api.example.com"),  # exact beats wildcard
    ("API.Example.Com.", "api.example.com"),
    ("a.example.com", "*.example.com"),
    ("a.b.example.com", "*.example.com"),  # any depth
    ("x.y.z.w.example.com", "*.example.com"),
    ("A.EXAMPLE.COM.", "*.example.com"),
    ("github.com", "GitHub.com"),  # the caller's spelling is reported
    ("GITHUB.COM.", "GitHub.com"),
    ("h.deep.corp.internal", "*.deep.corp.internal"),
    ("exact.only.org", "exact.only.org."),
]

REJECT = [
    "example.com",  # the wildcard never matches its apex
    "example.com.",
    "badexample.com",  # suffix match must respect label boundaries
    "a.badexample.com",
    "example.com.evil.net",
    "com",
    "www.github.com",  # exact pattern does not cover subdomains
    "deep.corp.internal",
    "corp.internal",
    "x.exact.only.org",
    "only.org",
    "",
    ".",
    "github.co",
]


@pytest.fixture(scope="module")
def matcher():
    return HostnameMatcher(POLICY)


@pytest.mark.parametrize(("qname", "pattern"), ACCEPT)
def test_accept(matcher, qname, pattern):
    assert matcher.match(qname) == pattern


@pytest.mark.parametrize("qname", REJECT)
def test_reject(matcher, qname):
    assert matcher.match(qname) is None


def test_most_specific_wildcard_wins():
    m = HostnameMatcher(["*.com", "*.example.com", "*.b.example.com"])
    assert m.match("a.b.example.com") == "*.b.example.com"
    assert m.match("a.c.example.com") == "*.example.com"
    assert m.match("example.com") == "*.com"


def test_empty_matcher_matches_nothing():
    m = HostnameMatcher([])
    assert len(m) == 0
    assert m.match("example.com") is None


def test_len_and_patterns():
    m = HostnameMatcher(["a.com", "A.com.", "*.a.com"])
    assert len(m) == 2  # duplicates collapse after normalisation
    assert m.patterns == ("a.com", "A.com.", "*.a.com")
    assert m.match("A.COM") == "a.com"  # first spelling wins


@pytest.mark.parametrize("bad", ["", ".", "*", "*.", "a*.example.com", "*.*.example.com", "a.*.com", "a..com", "  "])
def test_invalid_patterns_rejected(bad):
    with pytest.raises(ValueError):
        validate_pattern(bad)
    with pytest.raises(ValueError):
        HostnameMatcher([bad])


def test_many_patterns_is_a_lookup_not_a_scan():
    # 50k patterns: a linear regex scan would be slow; the dict walk is O(labels).
    m = HostnameMatcher([f"host{i}.example{i}.com" for i in range(25_000)] + [f"*.zone{i}.net" for i in range(25_000)])
    assert m.match("host24999.example24999.com") == "host24999.example24999.com"
    assert m.match("a.b.zone12345.net") == "*.zone12345.net"
    assert m.match("zone12345.net") is None


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(suffix=st.lists(label, min_size=1, max_size=3), prefix=st.lists(label, min_size=0, max_size=4))
def test_wildcard_property(suffix, prefix):
    """*.S matches N iff N ends with '.S' on a label boundary and N != S."""
    s = ".".join(suffix)
    name = ".".join(prefix + suffix)
    m = HostnameMatcher([f"*.{s}"])
    expected = name != s and name.endswith("." + s)
    assert (m.match(name) is not None) == expected
    assert (m.match(name.upper() + ".") is not None) == expected
