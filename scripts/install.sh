#!/usr/bin/env bash
# Install ringworker on this machine: the binary, shell completions, the man
# pages, the systemd unit, an example config and environment file.
#   sudo scripts/install.sh [PREFIX]        (PREFIX defaults to /usr/local)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
cargo build --profile dist --locked -p ringworker
bin=target/dist/ringworker
install -D -m 0755 "$bin" "$prefix/bin/ringworker"
install -d "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions" \
  "$prefix/share/fish/vendor_completions.d" "$prefix/share/man/man1"
"$bin" completions bash > "$prefix/share/bash-completion/completions/ringworker"
"$bin" completions zsh > "$prefix/share/zsh/site-functions/_ringworker"
"$bin" completions fish > "$prefix/share/fish/vendor_completions.d/ringworker.fish"
"$bin" manpage > "$prefix/share/man/man1/ringworker.1"
for sub in run demo check-config completions manpage; do
  "$bin" manpage "$sub" > "$prefix/share/man/man1/ringworker-$sub.1"
done
install -D -m 0644 deploy/systemd/ringworker.service /etc/systemd/system/ringworker.service
[ -e /etc/default/ringworker ] || install -D -m 0644 deploy/systemd/ringworker.env /etc/default/ringworker
[ -e /etc/ringworker/agent.toml ] || install -D -m 0640 deploy/config/agent.toml /etc/ringworker/agent.toml
echo "installed; edit /etc/ringworker/agent.toml, put the token in /etc/ringworker/token (chmod 600), then:"
echo "  systemctl daemon-reload && systemctl enable --now ringworker"
