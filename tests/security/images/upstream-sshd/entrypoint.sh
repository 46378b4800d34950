#!/bin/sh
# Fresh host keys, the key the test allows, and /srv/repo.git with one commit
# on main; then sshd on ports 22 and 2222. Prints `HOSTKEY <ed25519 public key>`.
set -eu
ssh-keygen -A >/dev/null
install -d -o git -g git -m 0700 /home/git/.ssh
printf '%s\n' "$AUTHORIZED_KEYS" > /home/git/.ssh/authorized_keys
chown git:git /home/git/.ssh/authorized_keys
su git -s /bin/sh -c '
  set -e
  git init -q --bare -b main /srv/repo.git
  git init -q -b main /tmp/seed
  echo "# upstream" > /tmp/seed/README.md
  git -C /tmp/seed add README.md
  git -C /tmp/seed -c user.name=upstream -c user.email=upstream@example.invalid commit -q -m "initial commit"
  git -C /tmp/seed push -q /srv/repo.git main
' 2>&1
echo "HOSTKEY $(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)"
exec /usr/sbin/sshd -D -e -p 22 -p 2222 -o UsePAM=no -o PasswordAuthentication=no -o AllowUsers=git
