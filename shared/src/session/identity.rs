//! Mirage's admission decision for a parsed registration (PROTOCOL.md §1, identity binding),
//! sans I/O: the session actor reads the line and the certificate, this decides.

use crate::error::code;
use crate::handshake::Registration;

/// Why a registration is refused: the wire code and the reason in the rejection line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u32,
    pub message: String,
}

fn refuse(message: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal {
        code: code::TRANSPORT,
        message: message.into(),
    })
}

/// `keyed`: with frame auth required, the ghost_ids that have a key. `cert`: the identity
/// the client certificate proves, if TLS asked for one.
pub fn admit(
    reg: &Registration,
    keyed: Option<&[String]>,
    cert: Option<&str>,
) -> Result<(), Refusal> {
    if keyed.is_some_and(|k| !k.contains(&reg.ghost_id)) {
        return refuse(format!(
            "frame auth is required and no key is configured for {}",
            reg.ghost_id
        ));
    }
    let declared = reg.peer_identity.trim();
    match cert {
        // The certificate names the Ghost; a declared identity must agree.
        Some(cert) if cert != reg.ghost_id => {
            refuse(format!("identity binding failure: certificate is {cert}"))
        }
        Some(cert) if !declared.is_empty() && declared != cert => refuse("declared peer mismatch"),
        Some(_) => Ok(()),
        // No certificate (development): the declared identity must be the id.
        None if reg.peer_identity != reg.ghost_id => refuse("identity binding failure"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, peer: &str) -> Registration {
        Registration {
            ghost_id: id.into(),
            peer_identity: peer.into(),
            ..Default::default()
        }
    }

    fn why(r: Result<(), Refusal>) -> String {
        r.err().map(|r| r.message).unwrap_or_default()
    }

    #[test]
    fn the_certificate_binds_the_ghost_id() {
        assert_eq!(admit(&reg("g1", "g1"), None, Some("g1")), Ok(()));
        assert_eq!(admit(&reg("g1", ""), None, Some("g1")), Ok(()));
        assert_eq!(admit(&reg("g1", " g1 "), None, Some("g1")), Ok(()));
        assert_eq!(
            why(admit(&reg("g1", "g1"), None, Some("g2"))),
            "identity binding failure: certificate is g2"
        );
        assert_eq!(
            why(admit(&reg("g1", "other"), None, Some("g1"))),
            "declared peer mismatch"
        );
    }

    #[test]
    fn without_a_certificate_the_declared_identity_must_be_the_id() {
        assert_eq!(admit(&reg("g1", "g1"), None, None), Ok(()));
        assert_eq!(
            why(admit(&reg("g1", "g2"), None, None)),
            "identity binding failure"
        );
        // Exact match without a certificate: padding is not trimmed.
        assert!(admit(&reg("g1", " g1"), None, None).is_err());
    }

    #[test]
    fn auth_required_refuses_an_unkeyed_ghost_first() {
        let keys = vec!["g1".to_string()];
        assert_eq!(admit(&reg("g1", "g1"), Some(&keys), None), Ok(()));
        let r = admit(&reg("g2", "nobody"), Some(&keys), None);
        assert_eq!(
            r,
            Err(Refusal {
                code: code::TRANSPORT,
                message: "frame auth is required and no key is configured for g2".into()
            })
        );
    }
}
