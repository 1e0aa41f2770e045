#!/usr/bin/env bash
# Install ringworker on this machine: the binary, shell completions, the man
# pages, the systemd unit, an example config and environment file.
#   sudo scripts/install.sh [PREFIX]        (PREFIX defaults to /usr/local)
# Environment:
#   DESTDIR=DIR          stage every file under DIR instead of / (packages,
#                        tests); nothing outside DIR is written
#   RINGWORKER_BIN=PATH  install this binary instead of building one with
#                        `cargo build --profile dist`
#   RINGWORKER_LOADGEN_BIN=PATH  likewise for ringworker-loadgen (with
#                        RINGWORKER_BIN and without this, no loadgen is installed)
# Modes: the config directory 0755 and agent.toml 0644, because the service
# runs as a dynamic user that owns neither; agent.toml holds no secret. The
# token stays 0600 root: systemd hands the agent a copy as a credential.
set -euo pipefail
bin=${RINGWORKER_BIN:+$(realpath "$RINGWORKER_BIN")}
loadgen=${RINGWORKER_LOADGEN_BIN:+$(realpath "$RINGWORKER_LOADGEN_BIN")}
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
root=${DESTDIR:-}
if [ -z "$bin" ]; then
  cargo build --profile dist --locked -p ringworker -p ringworker-loadgen
  bin=target/dist/ringworker
  loadgen=target/dist/ringworker-loadgen
fi
install -D -m 0755 "$bin" "$root$prefix/bin/ringworker"
install -d "$root$prefix/share/bash-completion/completions" "$root$prefix/share/zsh/site-functions" \
  "$root$prefix/share/fish/vendor_completions.d" "$root$prefix/share/man/man1"
"$bin" completions bash > "$root$prefix/share/bash-completion/completions/ringworker"
"$bin" completions zsh > "$root$prefix/share/zsh/site-functions/_ringworker"
"$bin" completions fish > "$root$prefix/share/fish/vendor_completions.d/ringworker.fish"
"$bin" manpage > "$root$prefix/share/man/man1/ringworker.1"
for sub in run demo check-config completions manpage; do
  "$bin" manpage "$sub" > "$root$prefix/share/man/man1/ringworker-$sub.1"
done
if [ -n "$loadgen" ]; then
  install -D -m 0755 "$loadgen" "$root$prefix/bin/ringworker-loadgen"
  "$loadgen" completions bash > "$root$prefix/share/bash-completion/completions/ringworker-loadgen"
  "$loadgen" completions zsh > "$root$prefix/share/zsh/site-functions/_ringworker-loadgen"
  "$loadgen" completions fish > "$root$prefix/share/fish/vendor_completions.d/ringworker-loadgen.fish"
  "$loadgen" manpage > "$root$prefix/share/man/man1/ringworker-loadgen.1"
fi
# The unit names the binary where PREFIX put it.
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
sed "s|/usr/local/bin/ringworker|$prefix/bin/ringworker|g" deploy/systemd/ringworker.service > "$unit"
install -D -m 0644 "$unit" "$root/etc/systemd/system/ringworker.service"
[ -e "$root/etc/default/ringworker" ] || install -D -m 0644 deploy/systemd/ringworker.env "$root/etc/default/ringworker"
install -d -m 0755 "$root/etc/ringworker"
config=$root/etc/ringworker/agent.toml
if [ ! -e "$config" ]; then
  install -m 0644 deploy/config/agent.toml "$config"
elif [ "$(stat -c %a "$config")" != 644 ]; then
  # Installed 0640 by earlier versions: the service user could not read it.
  chmod 0644 "$config"
  echo "made /etc/ringworker/agent.toml readable by the service user (0644); it holds no secret"
fi
echo "installed${root:+ under $root}. Then:"
echo "  1. set manager in /etc/ringworker/agent.toml (check it: ringworker check-config --config /etc/ringworker/agent.toml)"
echo "  2. put the token in a root-only file (paste it, then Ctrl-D):"
echo "       install -m 0600 /dev/stdin /etc/ringworker/token"
echo "     systemd gives the agent its own copy of it as a credential"
echo "  3. for a tls:// manager, also install deploy/systemd/ringworker.service.d/tls.conf (see its comments)"
echo "  4. systemctl daemon-reload && systemctl enable --now ringworker"
