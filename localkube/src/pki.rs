//! Secrets of a local control plane: the service-account signing key and bearer tokens.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

use crate::{Error, Result};

/// DER of `SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey, prime256v1 }, BIT STRING }`
/// up to the 65-byte uncompressed point that follows it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The service-account key pair, as PEM.
pub struct ServiceAccountKey {
    /// PKCS#8 (`BEGIN PRIVATE KEY`): kube-apiserver's `--service-account-signing-key-file` and
    /// kube-controller-manager's `--service-account-private-key-file`.
    pub private_pem: String,
    /// PKIX (`BEGIN PUBLIC KEY`): kube-apiserver's `--service-account-key-file`. (Go's public-key
    /// reader does not take EC keys in PKCS#8, hence a separate file.)
    pub public_pem: String,
}

/// A fresh ECDSA P-256 key pair (tokens are signed ES256).
pub fn service_account_key() -> Result<ServiceAccountKey> {
    let rng = SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| Error::Crypto("cannot generate the service-account key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| Error::Crypto("cannot read back the generated service-account key"))?;
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok(ServiceAccountKey {
        private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", &spki),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A random bearer token: 32 random bytes, hex.
pub fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Crypto("cannot read random bytes"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random lowercase suffix for names (`len` hex characters, at most 64).
pub fn random_suffix(len: usize) -> Result<String> {
    let token = random_token()?;
    Ok(token[..len.min(token.len())].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_key_is_pem() {
        let key = service_account_key().expect("key");
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(key.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        // 26 + 65 bytes of DER are 124 base64 characters.
        let body: String = key
            .public_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert_eq!(body.len(), 124);
    }

    #[test]
    fn tokens_are_hex_and_suffixes_short() {
        let t = random_token().expect("token");
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(random_suffix(6).expect("suffix").len(), 6);
    }
}
