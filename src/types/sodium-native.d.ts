// The part of sodium-native's API that agentvpn uses (the package ships no types).
declare module 'sodium-native' {
  type Bytes = Uint8Array;
  const sodium: {
    crypto_aead_chacha20poly1305_ietf_encrypt(c: Bytes, m: Bytes, ad: Bytes | null, nsec: null, npub: Bytes, k: Bytes): number;
    crypto_aead_chacha20poly1305_ietf_decrypt(m: Bytes, nsec: null, c: Bytes, ad: Bytes | null, npub: Bytes, k: Bytes): number;
    crypto_aead_xchacha20poly1305_ietf_encrypt(c: Bytes, m: Bytes, ad: Bytes | null, nsec: null, npub: Bytes, k: Bytes): number;
    crypto_aead_xchacha20poly1305_ietf_decrypt(m: Bytes, nsec: null, c: Bytes, ad: Bytes | null, npub: Bytes, k: Bytes): number;
    crypto_scalarmult(q: Bytes, n: Bytes, p: Bytes): void;
    crypto_scalarmult_base(q: Bytes, n: Bytes): void;
    /** Throws on a key that is not a point of the main subgroup. */
    crypto_sign_ed25519_pk_to_curve25519(x25519Pk: Bytes, ed25519Pk: Bytes): void;
    crypto_sign_ed25519_sk_to_curve25519(x25519Sk: Bytes, ed25519Sk: Bytes): void;
    crypto_sign_seed_keypair(pk: Bytes, sk: Bytes, seed: Bytes): void;
    crypto_sign_detached(sig: Bytes, m: Bytes, sk: Bytes): void;
    /** False for a signature that does not verify, and for a small-order or non-canonical key or R. */
    crypto_sign_verify_detached(sig: Bytes, m: Bytes, pk: Bytes): boolean;
    randombytes_buf(buf: Bytes): void;
    sodium_memcmp(a: Bytes, b: Bytes): boolean;
  };
  export default sodium;
}
