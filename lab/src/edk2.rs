//! What EDK2 firmware (OVMF) reads for HTTPS boot: its trusted CAs as an `EFI_SIGNATURE_LIST`
//! of X.509 certificates, which QEMU hands it as the fw_cfg file `etc/edk2/https/cacerts`
//! (OVMF copies it into the `TlsCaCertificate` variable at start).

/// `EFI_CERT_X509_GUID` (UEFI 2.10 §32.4.1), `a5c059a1-94e4-4aa7-87b5-ab155c2bf072`, in the
/// GUID's byte order (the first three fields little-endian).
const EFI_CERT_X509_GUID: [u8; 16] = [
    0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72,
];

/// The owner recorded with each certificate: any GUID will do; this one says "the Stampede lab".
const OWNER: [u8; 16] = *b"stampede-lab-ca!";

/// One `EFI_SIGNATURE_LIST` per certificate (each list holds signatures of one size), each
/// `{ SignatureType, SignatureListSize, SignatureHeaderSize = 0, SignatureSize }` followed by
/// one `EFI_SIGNATURE_DATA { SignatureOwner, DER }`.
pub fn signature_lists(ders: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for der in ders {
        let signature_size = 16 + der.len();
        let list_size = 16 + 4 + 4 + 4 + signature_size;
        out.extend_from_slice(&EFI_CERT_X509_GUID);
        out.extend_from_slice(&(list_size as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(signature_size as u32).to_le_bytes());
        out.extend_from_slice(&OWNER);
        out.extend_from_slice(der);
    }
    out
}

/// The DER of every `CERTIFICATE` block of a PEM text; `None` if a block is not valid base64.
pub fn pem_certificates(pem: &str) -> Option<Vec<Vec<u8>>> {
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (line, &mut body) {
            ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(text)) => {
                certs.push(base64_decode(text)?);
                body = None;
            }
            (line, Some(text)) => text.push_str(line),
            _ => {}
        }
    }
    Some(certs)
}

/// Standard base64 (RFC 4648 §4) with padding.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + produced]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        for (text, want) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(
                base64_decode(text).as_deref(),
                Some(want.as_bytes()),
                "{text}"
            );
        }
        assert_eq!(base64_decode("Zm9v!"), None);
    }

    #[test]
    fn one_list_per_certificate_with_its_sizes() {
        let pem = "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n";
        let ders = pem_certificates(pem).expect("pem");
        assert_eq!(ders, vec![vec![1, 2, 3]]);
        let list = signature_lists(&ders);
        assert_eq!(list.len(), 28 + 16 + 3);
        assert_eq!(&list[..16], &EFI_CERT_X509_GUID);
        assert_eq!(u32::from_le_bytes(list[16..20].try_into().expect("4")), 47);
        assert_eq!(u32::from_le_bytes(list[24..28].try_into().expect("4")), 19);
        assert_eq!(&list[44..], &[1, 2, 3]);
    }
}
