#!/usr/bin/env bash
# Start what the test suite talks to, if it is installed here and not running:
# PostgreSQL on 127.0.0.1:5432, Node packages of the FHIR test server, Chromium for browser tests,
# and the OpenSSH server binary the SFTP delivery tests start on their own (tests/submission).
set -u
if command -v pg_lsclusters >/dev/null 2>&1; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
fi
if [ -f tests/fhir_server/package.json ] && command -v npm >/dev/null 2>&1; then
  if [ ! -d tests/fhir_server/node_modules ]; then
    echo "installing the FHIR test server's Node packages"
    (cd tests/fhir_server && npm ci --no-audit --no-fund --loglevel=error) || true
  fi
fi
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
fi
if [ ! -x /usr/sbin/sshd ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  # Only the binary is needed: the tests run their own sshd on a free port with a temporary
  # host key and config; the system service is not started (policy-rc.d may forbid it anyway).
  echo "installing the OpenSSH server for the SFTP delivery tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null) || true
fi
exit 0
