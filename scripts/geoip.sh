#!/usr/bin/env bash
# Puts a real, freely redistributable IP-to-country database at DEST (default
# /var/lib/sentinel/country.mmdb, what `geo.database` points at): ip-location-db's
# geo-whois-asn-country (IPv4 and IPv6, MaxMind DB format), fetched with the npm client,
# with its licence beside it as DEST.LICENSE. Idempotent: does nothing when DEST already
# holds a MaxMind DB, unless --force. Used by the project's setup and its installer.
set -euo pipefail

PACKAGE=@ip-location-db/geo-whois-asn-country-mmdb
VERSION=${SENTINEL_GEOIP_VERSION:-2.3.2026061719}
DB_FILE=geo-whois-asn-country.mmdb
# Every MaxMind DB file has this marker before its metadata, near the end of the file.
MARKER=$'\xab\xcd\xefMaxMind.com'

say() { printf '==> %s\n' "$*"; }
die() { printf 'geoip: %s\n' "$*" >&2; exit 1; }
usage() {
  cat <<USAGE
usage: $0 [--force] [DEST]
Installs the ip-location-db country database ($PACKAGE@$VERSION)
at DEST (default /var/lib/sentinel/country.mmdb), with its licence at DEST.LICENSE.
  --force   replace DEST even when it already holds a MaxMind DB
USAGE
}

force=0
dest=
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $arg" ;;
    *) [ -z "$dest" ] || { usage >&2; die "only one DEST, got '$dest' and '$arg'"; }
       dest=$arg ;;
  esac
done
dest=${dest:-/var/lib/sentinel/country.mmdb}
case "$dest" in */) die "DEST must be a file, not a directory: $dest" ;; esac

is_mmdb() {
  [ -f "$1" ] && [ -s "$1" ] && LC_ALL=C grep -aqF "$MARKER" < <(tail -c 200000 "$1")
}

maxmind_hint() {
  say "to use a MaxMind GeoLite2/GeoIP2 Country database instead, put GeoLite2-Country.mmdb"
  say "on this host (e.g. with geoipupdate) and point [geo] database at it in sentinel.toml"
}

if [ "$force" -eq 0 ] && is_mmdb "$dest"; then
  say "country database present at $dest (--force to replace it)"
  maxmind_hint
  exit 0
fi
if [ -e "$dest" ] && ! is_mmdb "$dest"; then
  say "$dest exists but is not a MaxMind DB: replacing it"
fi

if ! command -v npm >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "npm is needed to fetch the database: install it (apt-get install npm) or run as root"
  say "installing npm (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dest.tmp" "$dest.LICENSE.tmp"' EXIT

say "fetching $PACKAGE@$VERSION with npm"
(cd "$tmp" && npm pack --loglevel=error "$PACKAGE@$VERSION" >/dev/null) ||
  die "npm pack $PACKAGE@$VERSION failed (is the npm registry reachable? see npm's message above)"
tarball=("$tmp"/*.tgz)
[ -f "${tarball[0]}" ] || die "npm pack produced no tarball"
tar -xzf "${tarball[0]}" -C "$tmp" "package/$DB_FILE" package/NRO_LICENSE package/package.json ||
  die "$PACKAGE@$VERSION does not hold package/$DB_FILE and its licence"
is_mmdb "$tmp/package/$DB_FILE" || die "package/$DB_FILE in $PACKAGE@$VERSION is not a MaxMind DB"

licence=$(node -p 'const p = require(process.argv[1]); `${p.license} (${p.repository && p.repository.url})`' \
  "$tmp/package/package.json" 2>/dev/null || echo "see the npm package")

say "installing $dest ($(du -h "$tmp/package/$DB_FILE" | cut -f1)) and $dest.LICENSE"
mkdir -p "$(dirname "$dest")"
install -m 0644 "$tmp/package/$DB_FILE" "$dest.tmp"
{
  printf '%s is %s from the npm package %s@%s,\n' "$(basename "$dest")" "$DB_FILE" "$PACKAGE" "$VERSION"
  printf 'licensed %s.\n' "$licence"
  printf 'It is built from GeoFeed, RIR WHOIS and ASN data; the RIR data comes with this notice:\n\n'
  cat "$tmp/package/NRO_LICENSE"
  printf '\n'
} >"$dest.LICENSE.tmp"
chmod 0644 "$dest.LICENSE.tmp"
mv -f "$dest.LICENSE.tmp" "$dest.LICENSE"
mv -f "$dest.tmp" "$dest"
say "country database installed at $dest"
maxmind_hint
