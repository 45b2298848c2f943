"""Router: which app a request is for, by Host (server_names) and path prefix (base_uri).

Exact host first, then the longest ``*.suffix`` wildcard, then the apps that
answer every host; among those, the longest base_uri that prefixes the path on
a segment boundary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passenger.config import AppConfig, ServerConfig
from passenger.http.router import Router
from passenger.loader import build_config

Entry = tuple[tuple[str, ...], str, str]


def router(*entries: Entry) -> Router[str]:
    return Router(entries)


# Host names.

HOSTS = router(
    (("example.com",), "/", "exact"),
    (("*.example.com",), "/", "wild"),
    (("*.deep.example.com",), "/", "deeper wild"),
    ((), "/", "anywhere"),
)


@pytest.mark.parametrize(("host", "expected"), [
    (b"example.com", "exact"),
    (b"www.example.com", "wild"),
    (b"a.b.example.com", "wild"),
    (b"deep.example.com", "wild"),
    (b"x.deep.example.com", "deeper wild"),
    (b"x.y.deep.example.com", "deeper wild"),
    (b"other.org", "anywhere"),
    (b"example.com.evil.org", "anywhere"),
    (b"notexample.com", "anywhere"),
    (b".example.com", "anywhere"),
    (b"example.co", "anywhere"),
    (b"127.0.0.1", "anywhere"),
])
def test_exact_beats_the_longest_wildcard_beats_every_host(host: bytes, expected: str) -> None:
    assert HOSTS.route(host, b"/") == expected


def test_declaration_order_does_not_matter() -> None:
    reordered = router(((), "/", "anywhere"), (("*.example.com",), "/", "wild"),
                       (("*.deep.example.com",), "/", "deeper wild"), (("example.com",), "/", "exact"))
    for host in (b"example.com", b"www.example.com", b"x.deep.example.com", b"other.org"):
        assert reordered.route(host, b"/") == HOSTS.route(host, b"/")


def test_a_wildcard_does_not_match_the_bare_domain() -> None:
    r = router((("*.example.com",), "/", "wild"))
    assert r.route(b"example.com", b"/") is None
    assert r.route(b"a.example.com", b"/") == "wild"


@pytest.mark.parametrize(("host", "expected"), [
    (b"EXAMPLE.COM", "exact"),
    (b"Example.Com:8080", "exact"),
    (b"WWW.Example.COM", "wild"),
    (b"WWW.EXAMPLE.COM:443", "wild"),
    (b"Other.ORG", "anywhere"),
])
def test_host_is_case_insensitive(host: bytes, expected: str) -> None:
    assert HOSTS.route(host, b"/") == expected


@pytest.mark.parametrize(("host", "expected"), [
    (b"example.com:8080", "exact"),
    (b"example.com:80", "exact"),
    (b"www.example.com:8443", "wild"),
    (b"other.org:3000", "anywhere"),
])
def test_host_with_a_port(host: bytes, expected: str) -> None:
    assert HOSTS.route(host, b"/") == expected


def test_ipv6_literal_hosts() -> None:
    r = router((("[::1]",), "/", "v6"), ((), "/", "anywhere"))
    assert r.route(b"[::1]", b"/") == "v6"
    assert r.route(b"[::1]:8080", b"/") == "v6"
    assert r.route(b"[::2]:8080", b"/") == "anywhere"


@pytest.mark.parametrize("host", [None, b""])
def test_missing_host(host: bytes | None) -> None:
    assert HOSTS.route(host, b"/") == "anywhere"
    assert router((("example.com",), "/", "exact"), (("*.example.com",), "/", "wild")).route(host, b"/") is None


def test_star_answers_every_host_like_no_server_names() -> None:
    r = router((("*",), "/", "star"), (("example.com",), "/api", "api"))
    assert r.route(b"anything.org", b"/x") == "star"
    assert r.route(None, b"/api") == "star"
    assert r.route(b"example.com", b"/api/v1") == "api"
    assert r.route(b"example.com", b"/") == "star"


def test_an_app_with_several_names() -> None:
    r = router((("a.org", "*.b.org", "c.org"), "/", "multi"), ((), "/", "anywhere"))
    assert [r.route(h, b"/") for h in (b"a.org", b"x.b.org", b"c.org:81", b"c.org", b"b.org", b"d.org")] == [
        "multi", "multi", "multi", "multi", "anywhere", "anywhere"]


def test_nothing_matches() -> None:
    assert router().route(b"example.com", b"/") is None
    assert router().route(None, b"/") is None
    r = router((("example.com",), "/", "exact"), ((), "/blog", "blog"))
    assert r.route(b"other.org", b"/") is None
    assert r.route(b"other.org", b"/blogs") is None
    assert r.route(b"other.org", b"/blog") == "blog"


# Path prefixes.

PATHS = router(
    ((), "/", "root"),
    ((), "/blog", "blog"),
    ((), "/blog/admin", "admin"),
    ((), "/a/b/c", "abc"),
)


@pytest.mark.parametrize(("target", "expected"), [
    (b"/", "root"),
    (b"/index.html", "root"),
    (b"/blog", "blog"),
    (b"/blog/", "blog"),
    (b"/blog/x", "blog"),
    (b"/blog/x/y", "blog"),
    (b"/blog?q=1", "blog"),
    (b"/blog?next=/blog/admin", "blog"),
    (b"/blog#frag", "blog"),
    (b"/blogs", "root"),
    (b"/blog-post", "root"),
    (b"/blog.html", "root"),
    (b"/Blog", "root"),
    (b"/blog/admin", "admin"),
    (b"/blog/admin/", "admin"),
    (b"/blog/admin/users?x", "admin"),
    (b"/blog/admin?x", "admin"),
    (b"/blog/administrator", "blog"),
    (b"/a/b", "root"),
    (b"/a/b/c", "abc"),
    (b"/a/b/cd", "root"),
    (b"/a/b/c/d", "abc"),
    (b"", "root"),
    (b"?", "root"),
])
def test_the_longest_base_uri_wins_on_a_segment_boundary(target: bytes, expected: str) -> None:
    assert PATHS.route(b"example.com", target) == expected


def test_without_a_root_app_unmatched_paths_route_nowhere() -> None:
    r = router(((), "/blog", "blog"), ((), "/shop", "shop"))
    assert r.route(b"h", b"/blog/1") == "blog"
    assert r.route(b"h", b"/shop") == "shop"
    assert r.route(b"h", b"/blogs") is None
    assert r.route(b"h", b"/") is None
    assert r.route(b"h", b"/sho") is None


def test_a_host_whose_apps_do_not_cover_the_path_falls_back_to_wildcards_then_every_host() -> None:
    r = router((("example.com",), "/blog", "exact blog"), (("*.com",), "/shop", "wild shop"), ((), "/", "anywhere"))
    assert r.route(b"example.com", b"/blog/1") == "exact blog"
    assert r.route(b"example.com", b"/shop/1") == "wild shop"
    assert r.route(b"example.com", b"/") == "anywhere"
    assert r.route(b"example.org", b"/shop") == "anywhere"


def test_host_and_base_uri_together() -> None:
    r = router((("example.com",), "/", "site"), (("example.com",), "/api", "api"),
               (("*.example.com",), "/api", "tenant api"), ((), "/api", "shared api"), ((), "/", "fallback"))
    assert r.route(b"example.com", b"/api/x") == "api"
    assert r.route(b"example.com", b"/apix") == "site"
    assert r.route(b"t1.example.com", b"/api") == "tenant api"
    assert r.route(b"t1.example.com", b"/") == "fallback"
    assert r.route(b"other.org", b"/api?x") == "shared api"
    assert r.route(b"other.org", b"/about") == "fallback"


# Request-target forms.


@pytest.mark.parametrize(("target", "expected"), [
    (b"http://example.com/blog/x", "blog"),
    (b"http://example.com/blog", "blog"),
    (b"https://example.com:8443/blog?q=1", "blog"),
    (b"http://example.com/blogs", "root"),
    (b"http://example.com", "root"),
    (b"http://example.com/", "root"),
    (b"http://example.com/blog/admin#x", "admin"),
    (b"*", "root"),  # asterisk-form (OPTIONS *)
    (b"example.com:443", "root"),  # authority-form (CONNECT)
])
def test_absolute_and_other_target_forms(target: bytes, expected: str) -> None:
    assert PATHS.route(b"example.com", target) == expected


def test_a_slash_in_the_query_of_an_absolute_target_with_no_path() -> None:
    assert PATHS.route(b"example.com", b"http://example.com?next=/blog") == "root"


def test_an_absolute_target_is_routed_by_its_own_host() -> None:
    r = router((("a.example",), "/", "a"), (("b.example",), "/", "b"))
    assert r.route(b"b.example", b"http://a.example/") == "a"


def test_names_match_whatever_the_port() -> None:
    """server_names carry no port (the config refuses one); the Host header's port is ignored."""
    r = router((("example.com",), "/api", "api"), (("example.com",), "/", "site"))
    assert r.route(b"example.com:8080", b"/api") == "api"
    assert r.route(b"example.com:8080", b"/") == "site"


# Router.only: the fast path for the common single-app configuration.


def test_only_is_the_single_catch_all_app_at_root() -> None:
    r = router(((), "/", "app"))
    assert r.only == "app"
    assert r.route(None, b"*") == "app"
    assert r.route(b"whatever:1", b"http://x/y") == "app"


@pytest.mark.parametrize("entries", [
    [],
    [(("example.com",), "/", "app")],
    [((), "/blog", "app")],
    [((), "/", "a"), ((), "/b", "b")],
    [((), "/", "a"), (("x.org",), "/", "b")],
])
def test_only_is_not_set_otherwise(entries: list[Entry]) -> None:
    assert Router(entries).only is None


def test_a_single_app_on_one_host_still_routes_by_host() -> None:
    r = router((("example.com",), "/", "app"))
    assert r.route(b"example.com", b"/x") == "app"
    assert r.route(b"other.org", b"/x") is None
    blog = router(((), "/blog", "blog"))
    assert blog.route(b"h", b"/blog/1") == "blog"
    assert blog.route(b"h", b"/") is None


def test_routes_the_apps_of_a_loaded_config(tmp_path: Path) -> None:
    """server_names are lower-cased and base_uri normalised by the loader; the router relies on both."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_file = tmp_path / "passenger.toml"
    config_file.write_text(f"""
[[app]]
name = "blog"
root = '{tmp_path / "a"}'
start_command = "x"
server_names = ["WWW.Example.COM"]
base_uri = "/Blog/"

[[app]]
name = "site"
root = '{tmp_path / "b"}'
start_command = "x"
""")
    config = build_config({}, str(config_file))
    assert isinstance(config, ServerConfig)
    r: Router[AppConfig] = Router((app.server_names, app.base_uri, app) for app in config.apps)
    assert r.only is None
    blog, site = config.apps
    assert r.route(b"www.example.com", b"/Blog/post") is blog
    assert r.route(b"WWW.EXAMPLE.COM:3000", b"/Blog") is blog
    assert r.route(b"www.example.com", b"/blog") is site, "paths are case-sensitive"
    assert r.route(b"other.org", b"/Blog") is site


# Properties.

hosts = st.one_of(st.none(), st.binary(max_size=40),
                  st.from_regex(rb"\A[A-Za-z0-9.\-]{0,20}(:[0-9]{1,5})?\Z"))
targets = st.one_of(st.binary(max_size=60), st.from_regex(rb"\A(https?://[a-z.]{1,10})?/[a-z/?#=]{0,20}\Z"))


@given(hosts, targets)
@settings(max_examples=300, derandomize=True, database=None)
def test_a_single_catch_all_app_takes_every_request(host: bytes | None, target: bytes) -> None:
    assert router(((), "/", "only")).route(host, target) == "only"
    assert router((("*",), "/", "star")).route(host, target) == "star", "also without the fast path"


@given(hosts, targets)
@settings(max_examples=300, derandomize=True, database=None)
def test_a_catch_all_at_root_means_every_request_routes_somewhere(host: bytes | None, target: bytes) -> None:
    r = router((("example.com",), "/a", "exact"), (("*.example.com",), "/b", "wild"), ((), "/c", "c"),
               ((), "/", "root"))
    assert r.route(host, target) in {"exact", "wild", "c", "root"}


segments = st.sampled_from(["a", "b", "ab", "a.b"])


@given(st.lists(st.lists(segments, min_size=1, max_size=3), max_size=5, unique_by=tuple),
       st.booleans(), st.lists(segments, max_size=4), st.sampled_from(["", "/", "?q=/a/b", "#a"]))
@settings(max_examples=400, derandomize=True, database=None)
def test_the_longest_segment_prefix_wins(mounts: list[list[str]], with_root: bool, path: list[str],
                                         suffix: str) -> None:
    uris = ["/" + "/".join(m) for m in mounts] + (["/"] if with_root else [])
    r = router(*(((), uri, uri) for uri in uris))
    request_path = "/" + "/".join(path)

    def takes(uri: str) -> bool:
        return uri == "/" or request_path == uri or request_path.startswith(uri + "/")

    candidates = [uri for uri in uris if takes(uri)]
    expected = max(candidates, key=len) if candidates else None
    target = (request_path + suffix).encode()
    assert r.route(b"example.com", target) == expected
    assert r.route(b"example.com", b"http://example.com" + target) == expected
