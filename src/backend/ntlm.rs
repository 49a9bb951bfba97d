//! NTLMv2 client handshakes, computed by `sspi` (Devolutions' pure-Rust
//! SSPI): NEGOTIATE, then AUTHENTICATE from the server's CHALLENGE, with the
//! NTLMv2 response, key exchange and MIC, and — over HTTPS — the
//! `tls-server-end-point` channel binding that Exchange's Extended
//! Protection demands. Shared by SMTP AUTH NTLM (MS-SMTPNTLM) and EWS
//! Windows authentication; carrying the tokens is the protocols' job.

use std::panic::{AssertUnwindSafe, catch_unwind};

use sspi::{
    AuthIdentity, AuthIdentityBuffers, BufferType, ClientRequestFlags, CredentialUse,
    DataRepresentation, Ntlm, SecurityBuffer, Sspi, SspiImpl, Username,
};

/// One handshake in progress (NEGOTIATE sent, CHALLENGE awaited).
pub struct Handshake {
    ntlm: Ntlm,
    credentials: Option<AuthIdentityBuffers>,
}

/// The user as NTLM sends it:
/// - `DOMAIN\user` → that domain;
/// - `user@upn.suffix` → a user principal name with an empty domain, as
///   Windows clients send it (whatever the `domain` setting says);
/// - `user` → the connection's `domain`.
///
/// A NetBIOS domain is upper-cased: Windows compares it case-insensitively,
/// and Cyrus SASL (Postfix, Sendmail) computes NTLMv2 with it upper-cased,
/// so only the upper-case form works everywhere.
pub fn username(user: &str, domain: &str) -> Result<Username, String> {
    let parsed = if let Some((d, u)) = user.split_once('\\') {
        Username::new(u, Some(&d.to_uppercase()))
    } else if domain.is_empty() || user.contains('@') {
        Username::parse(user)
    } else {
        Username::new(user, Some(&domain.to_uppercase()))
    };
    parsed.map_err(|e| format!("NTLM cannot use the user name {user:?}: {e}"))
}

impl Handshake {
    /// Starts a handshake; returns it with the NEGOTIATE token.
    pub fn start(
        user: &str,
        domain: &str,
        password: &str,
        channel_binding: Option<&[u8]>,
    ) -> Result<(Self, Vec<u8>), String> {
        let identity = AuthIdentity {
            username: username(user, domain)?,
            password: password.to_owned().into(),
        };
        let mut ntlm = Ntlm::new();
        if let Some(cb) = channel_binding {
            ntlm.set_channel_bindings(cb);
        }
        let acquired = ntlm
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut ntlm)
            .map_err(|e| format!("NTLM: {e}"))?;
        let mut handshake = Self {
            ntlm,
            credentials: acquired.credentials_handle,
        };
        let negotiate = handshake.step(None)?;
        Ok((handshake, negotiate))
    }

    /// The AUTHENTICATE token answering `challenge`.
    pub fn respond(mut self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        self.step(Some(challenge))
    }

    fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, String> {
        // The CHALLENGE comes from the network; a parser panic on a hostile
        // one must fail this attempt, not the worker that runs it.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
            let mut input = input.map(|i| vec![SecurityBuffer::new(i.to_vec(), BufferType::Token)]);
            let mut builder = self
                .ntlm
                .initialize_security_context()
                .with_credentials_handle(&mut self.credentials)
                // Only authentication is wanted: no signing or sealing
                // afterwards (TLS protects the session where there is one).
                .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
                .with_target_data_representation(DataRepresentation::Native)
                .with_output(&mut output);
            if let Some(input) = input.as_mut() {
                builder = builder.with_input(input);
            }
            SspiImpl::initialize_security_context_impl(&mut self.ntlm, &mut builder)
                .and_then(|mut generator| generator.resolve_to_result())?;
            Ok::<_, sspi::Error>(
                output
                    .into_iter()
                    .next()
                    .map(|b| b.buffer)
                    .unwrap_or_default(),
            )
        }));
        match result {
            Ok(Ok(token)) if !token.is_empty() => Ok(token),
            Ok(Ok(_)) => Err("NTLM: no token produced".into()),
            Ok(Err(e)) => Err(format!("NTLM: {e}")),
            Err(_) => Err("NTLM: the server's CHALLENGE message could not be processed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sspi::UsernameParts;

    /// (account, NetBIOS domain or UPN suffix, is a UPN)
    fn parts(u: &Username) -> (String, Option<String>, bool) {
        match u.parts() {
            UsernameParts::DownLevelLogonName(p) => (
                p.account_name().into(),
                p.netbios_domain().map(Into::into),
                false,
            ),
            UsernameParts::UserPrincipalName(p) => {
                (p.account_name().into(), Some(p.suffix().into()), true)
            }
        }
    }

    #[test]
    fn user_name_forms() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            parts(&username("alice", "CORP").unwrap()),
            ("alice".into(), some("CORP"), false)
        );
        assert_eq!(
            parts(&username("corp\\alice", "OTHER").unwrap()),
            ("alice".into(), some("CORP"), false)
        );
        assert_eq!(
            parts(&username("alice", "Corp").unwrap()),
            ("alice".into(), some("CORP"), false)
        );
        assert_eq!(
            parts(&username("alice@corp.example.com", "").unwrap()),
            ("alice".into(), some("corp.example.com"), true)
        );
        // A UPN wins over the domain setting.
        assert_eq!(
            parts(&username("alice@corp.example.com", "CORP").unwrap()),
            ("alice".into(), some("corp.example.com"), true)
        );
        assert_eq!(
            parts(&username("alice", "").unwrap()),
            ("alice".into(), None, false)
        );
    }

    #[test]
    fn negotiate_is_an_ntlmssp_message() {
        let (_h, token) = Handshake::start("alice", "CORP", "pw", None).unwrap();
        assert!(token.starts_with(b"NTLMSSP\0\x01\0\0\0"));
    }

    /// A CHALLENGE as Windows sends it: extended session security, key
    /// exchange, and target info with a timestamp (which obliges a MIC).
    fn challenge_message() -> Vec<u8> {
        let mut target_info = Vec::new();
        for (id, value) in [
            (2u16, utf16("CORP")),
            (1, utf16("MAIL")),
            (7, 0x01d9_0000_0000_0000u64.to_le_bytes().to_vec()),
            (0, Vec::new()),
        ] {
            target_info.extend_from_slice(&id.to_le_bytes());
            target_info.extend_from_slice(&(value.len() as u16).to_le_bytes());
            target_info.extend_from_slice(&value);
        }
        let target_name = utf16("CORP");
        let flags: u32 = 0x0000_0001 // UNICODE
            | 0x0000_0004 // REQUEST_TARGET
            | 0x0000_0200 // NTLM
            | 0x0000_8000 // ALWAYS_SIGN
            | 0x0001_0000 // TARGET_TYPE_DOMAIN
            | 0x0008_0000 // EXTENDED_SESSIONSECURITY
            | 0x0080_0000 // TARGET_INFO
            | 0x0200_0000 // VERSION
            | 0x2000_0000 // 128
            | 0x4000_0000 // KEY_EXCH
            | 0x8000_0000; // 56
        let header_len = 56u32;
        let mut m = b"NTLMSSP\0".to_vec();
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
        m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
        m.extend_from_slice(&header_len.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // server challenge
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(header_len + target_name.len() as u32).to_le_bytes());
        m.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]); // version
        assert_eq!(m.len(), header_len as usize);
        m.extend_from_slice(&target_name);
        m.extend_from_slice(&target_info);
        m
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    /// A security buffer field (length, max length, offset) of an NTLM
    /// message.
    fn field(message: &[u8], at: usize) -> &[u8] {
        let len = u16::from_le_bytes([message[at], message[at + 1]]) as usize;
        let offset = u32::from_le_bytes(message[at + 4..at + 8].try_into().unwrap()) as usize;
        &message[offset..offset + len]
    }

    #[test]
    fn ntlm_answers_with_an_ntlmv2_response_and_a_mic() {
        let (handshake, _) = Handshake::start("alice", "corp", "pw", None).unwrap();
        let authenticate = handshake.respond(&challenge_message()).unwrap();
        assert_eq!(&authenticate[..8], b"NTLMSSP\0");
        assert_eq!(authenticate[8], 3, "message type 3 (AUTHENTICATE)");
        // NTLMv1 responses are exactly 24 bytes; NTLMv2 carries a blob.
        assert!(
            field(&authenticate, 20).len() > 24,
            "NTLMv2 response expected"
        );
        assert_eq!(
            field(&authenticate, 28),
            utf16("CORP"),
            "domain, upper-cased"
        );
        assert_eq!(field(&authenticate, 36), utf16("alice"));
        // The MIC follows the version field (offset 72) and is not zero.
        assert_ne!(&authenticate[72..88], &[0u8; 16], "MIC expected");
    }

    #[test]
    fn garbage_instead_of_a_challenge_fails_cleanly() {
        let (handshake, _) = Handshake::start("alice", "CORP", "pw", None).unwrap();
        assert!(handshake.respond(b"not a challenge").is_err());
    }
}
