#!/usr/bin/env bash
# Regenerate the key-format fixtures (PKCS#1 RSA and SEC1 EC keys, which rcgen with ring cannot
# write), signed by a throwaway CA, valid for 100 years. Run from this directory; commit the output.
set -euo pipefail
ext() { printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\n' "$1"; }
openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
openssl req -x509 -new -key ca-key.pem -subj /CN=anyedge-tls-fixtures-ca -days 36500 -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
openssl genrsa -traditional -out rsa-key.pem 2048          # BEGIN RSA PRIVATE KEY (PKCS#1)
openssl ecparam -name prime256v1 -genkey -out ec-key.pem    # EC PARAMETERS + BEGIN EC PRIVATE KEY (SEC1)
for name in rsa ec; do
  openssl req -new -key "$name-key.pem" -subj "/CN=$name.test" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 36500 \
    -extfile <(ext "$name.test") -out "$name.pem"
  rm "$name.csr"
done
rm -f ca-key.pem ca.srl
