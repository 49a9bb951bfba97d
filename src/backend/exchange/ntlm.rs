//! NTLMv2 for HTTP ("Windows authentication"), computed by `sspi`
//! (Devolutions' pure-Rust SSPI): NEGOTIATE, then AUTHENTICATE from the
//! server's CHALLENGE, with a MIC and, over HTTPS, the `tls-server-end-point`
//! channel binding that Exchange's Extended Protection demands.
//!
//! This module only makes tokens; carrying them on one TCP connection is the
//! HTTP layer's job.

use sspi::{
    AuthIdentity, AuthIdentityBuffers, BufferType, ClientRequestFlags, CredentialUse,
    DataRepresentation, Ntlm, SecurityBuffer, Sspi, SspiImpl, Username,
};

/// One handshake in progress (NEGOTIATE sent, CHALLENGE awaited).
pub struct Handshake {
    ntlm: Ntlm,
    credentials: Option<AuthIdentityBuffers>,
}

/// The user as NTLM sends it. `DOMAIN\user` and `user@upn.suffix` in the
/// username win (a UPN goes with an empty domain, as Windows sends it);
/// otherwise the `domain` setting is the NetBIOS domain.
pub fn username(user: &str, domain: &str) -> Result<Username, String> {
    let parsed = if user.contains('\\') || user.contains('@') || domain.is_empty() {
        Username::parse(user)
    } else {
        Username::new(user, Some(domain))
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
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut input = input.map(|i| vec![SecurityBuffer::new(i.to_vec(), BufferType::Token)]);
        let mut builder = self
            .ntlm
            .initialize_security_context()
            .with_credentials_handle(&mut self.credentials)
            // No signing or sealing: HTTP carries the messages, TLS protects them.
            .with_context_requirements(ClientRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_output(&mut output);
        if let Some(input) = input.as_mut() {
            builder = builder.with_input(input);
        }
        SspiImpl::initialize_security_context_impl(&mut self.ntlm, &mut builder)
            .and_then(|mut generator| generator.resolve_to_result())
            .map_err(|e| format!("NTLM: {e}"))?;
        let token = output
            .into_iter()
            .next()
            .map(|b| b.buffer)
            .unwrap_or_default();
        if token.is_empty() {
            return Err("NTLM: no token produced".into());
        }
        Ok(token)
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
            parts(&username("CORP\\alice", "OTHER").unwrap()),
            ("alice".into(), some("CORP"), false)
        );
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
}
