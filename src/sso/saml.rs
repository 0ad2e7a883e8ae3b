//! SAML 2.0 service provider: the AuthnRequest costguard sends (HTTP-Redirect
//! binding), its metadata, and the verification of the IdP's Response
//! (HTTP-POST binding) before anything in it is believed.
//!
//! Verification, in order (the first failure is the audit reason):
//! 1. the XML is parsed strictly ([`xml`]): no DOCTYPE, no entities, bounded;
//! 2. its shape: a `samlp:Response` root holding exactly one `saml:Assertion`
//!    as a direct child (no second one anywhere: in `Extensions`, in a
//!    `ds:Object`, wrapped, or a nested Response), no encrypted assertion,
//!    no duplicate `ID`s; a `ds:Signature` only as a direct child of the
//!    Response or of the Assertion, with one `Reference` to its parent's ID
//!    and only canonicalization / enveloped transforms;
//! 3. the Assertion is signed (or, if the provider allows it, the Response);
//! 4. every signature verifies with a pinned certificate (libxmlsec1 via
//!    samael; `KeyInfo` is never used, SHA-1 is refused);
//! 5. identity and conditions are read only from the bytes the verified
//!    signature covers (xmlsec's pre-digest, canonical: comments gone), so
//!    nothing outside the signature and no comment can change them;
//! 6. Issuer, Status, Destination, bearer SubjectConfirmation (Recipient,
//!    NotOnOrAfter, InResponseTo), Conditions (NotBefore, NotOnOrAfter,
//!    Audience) with the clock skew.
//!
//! The replay cache (each Assertion ID once until it expires) is the
//! caller's, in the shared store.
//!
//! One file of about 800 lines on purpose: the checks above are one
//! ordered chain over the same parsed document, and a reviewer must read
//! them together to see that nothing unverified is believed.

pub mod xml;

use std::collections::BTreeMap;
use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, CryptoProvider, ReduceMode, XmlSec,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::SamlProviderConfig;
use xml::{ASSERTION, DSIG, Element, PROTOCOL, XmlError};

const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const ENTITY: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity";

/// Transforms and canonicalizations a signature may use.
const ALLOWED_TRANSFORMS: [&str; 6] = [
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
    "http://www.w3.org/2006/12/xml-c14n11",
];

/// Signature algorithms accepted (SHA-1 is not).
const ALGORITHMS: [AllowedSignatureAlgorithm; 6] = [
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// Why a response was refused. [`SamlError::reason`] is the audit reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamlError {
    /// Not base64, not UTF-8, or not XML.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Over the size bound.
    #[error("response too large")]
    TooLarge,
    /// A DOCTYPE or an entity reference.
    #[error("DTDs and entities are refused")]
    Dtd,
    /// Not a `samlp:Response`.
    #[error("not a SAML Response")]
    NotAResponse,
    /// No assertion, several, or one out of place.
    #[error("exactly one Assertion, directly in the Response, is required")]
    AssertionCount,
    /// An encrypted assertion (not supported).
    #[error("encrypted assertions are not supported")]
    Encrypted,
    /// Two elements with one ID.
    #[error("duplicate ID")]
    DuplicateId,
    /// A signature out of place or of an unsupported shape.
    #[error("signature not allowed here: {0}")]
    SignatureShape(&'static str),
    /// The assertion is not signed (nor, if allowed, the Response).
    #[error("the assertion is not signed")]
    Unsigned,
    /// A signature did not verify with a pinned certificate.
    #[error("signature did not verify with the pinned certificate")]
    BadSignature,
    /// Issuer is not the IdP.
    #[error("wrong issuer")]
    WrongIssuer,
    /// The IdP reported a failure.
    #[error("IdP status {0}")]
    Status(String),
    /// Destination is not our ACS.
    #[error("wrong destination")]
    WrongDestination,
    /// No bearer confirmation for our ACS.
    #[error("wrong recipient")]
    WrongRecipient,
    /// Audience is not us.
    #[error("wrong audience")]
    WrongAudience,
    /// Past NotOnOrAfter.
    #[error("expired")]
    Expired,
    /// Before NotBefore.
    #[error("not yet valid")]
    NotYetValid,
    /// InResponseTo is not the request this browser started.
    #[error("InResponseTo does not match a pending request")]
    UnknownInResponseTo,
    /// No InResponseTo, and unsolicited responses are off.
    #[error("unsolicited response")]
    Unsolicited,
    /// No usable NameID, or another format than configured.
    #[error("no usable NameID")]
    NameId,
    /// Not UTF-8 XML 1.0 (another declared encoding would let the two
    /// XML parsers involved read different documents).
    #[error("only UTF-8 XML 1.0 is accepted")]
    Encoding,
    /// A comment or processing instruction inside a value that names
    /// someone (NameID, attribute, issuer, audience): no IdP writes one,
    /// and it is the trick that truncates names in other parsers.
    #[error("comment inside an identity value")]
    CommentInValue,
    /// A required element is missing or unreadable.
    #[error("missing {0}")]
    Missing(&'static str),
}

impl SamlError {
    /// The audit reason.
    pub fn reason(&self) -> String {
        match self {
            SamlError::Malformed(_) => "malformed_response".into(),
            SamlError::TooLarge => "response_too_large".into(),
            SamlError::Dtd => "dtd_refused".into(),
            SamlError::NotAResponse => "not_a_response".into(),
            SamlError::AssertionCount => "assertion_count".into(),
            SamlError::Encrypted => "encrypted_assertion".into(),
            SamlError::DuplicateId => "duplicate_id".into(),
            SamlError::SignatureShape(_) => "signature_shape".into(),
            SamlError::Unsigned => "unsigned".into(),
            SamlError::BadSignature => "bad_signature".into(),
            SamlError::WrongIssuer => "wrong_issuer".into(),
            SamlError::Status(s) => format!("idp_status:{s}"),
            SamlError::WrongDestination => "wrong_destination".into(),
            SamlError::WrongRecipient => "wrong_recipient".into(),
            SamlError::WrongAudience => "wrong_audience".into(),
            SamlError::Expired => "expired".into(),
            SamlError::NotYetValid => "not_yet_valid".into(),
            SamlError::UnknownInResponseTo => "unknown_in_response_to".into(),
            SamlError::Unsolicited => "unsolicited".into(),
            SamlError::NameId => "bad_name_id".into(),
            SamlError::CommentInValue => "comment_in_value".into(),
            SamlError::Encoding => "bad_encoding".into(),
            SamlError::Missing(what) => format!("missing_{what}"),
        }
    }

    /// Whether this looks like an attack rather than a misconfiguration or
    /// a slow browser (also written as `security.suspicious`).
    pub fn suspicious(&self) -> bool {
        matches!(
            self,
            SamlError::Dtd
                | SamlError::AssertionCount
                | SamlError::DuplicateId
                | SamlError::SignatureShape(_)
                | SamlError::BadSignature
                | SamlError::UnknownInResponseTo
                | SamlError::CommentInValue
                | SamlError::Encoding
        )
    }
}

impl From<XmlError> for SamlError {
    fn from(e: XmlError) -> Self {
        match e {
            XmlError::Doctype | XmlError::Entity => SamlError::Dtd,
            XmlError::Encoding => SamlError::Encoding,
            XmlError::TooLarge => SamlError::TooLarge,
            XmlError::Malformed(m) => SamlError::Malformed(m),
        }
    }
}

/// What a verified assertion says.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The Assertion's ID (replay cache key).
    pub assertion_id: String,
    /// The NameID, its whole text.
    pub name_id: String,
    /// Attribute name → values.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// The IdP's `SessionNotOnOrAfter`, if it set one.
    pub session_not_on_or_after: Option<OffsetDateTime>,
    /// Until when the assertion could be presented (replay cache lifetime).
    pub valid_until: OffsetDateTime,
}

/// A SAML identity provider costguard trusts.
pub struct SamlProvider {
    /// Its configuration.
    pub config: SamlProviderConfig,
    certs: Vec<CertificateDer>,
}

impl std::fmt::Debug for SamlProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamlProvider")
            .field("name", &self.config.name)
            .field("idp_entity_id", &self.config.idp_entity_id)
            .finish_non_exhaustive()
    }
}

/// `&`, `<`, `>`, `"` escaped for XML text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn instant(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).ok()
}

/// A new AuthnRequest ID: `_` and 32 hex digits (an xs:ID must not start
/// with a digit).
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("_{}", crate::model::hex(&bytes))
}

impl SamlProvider {
    /// A provider for `config` (its certificates already checked).
    pub fn new(config: SamlProviderConfig) -> Self {
        let certs = config
            .idp_certs
            .iter()
            .cloned()
            .map(CertificateDer::from)
            .collect();
        Self { config, certs }
    }

    /// The IdP URL that starts a login: an AuthnRequest with `request_id`,
    /// deflated and base64'd into `SAMLRequest` (HTTP-Redirect binding).
    pub fn login_url(&self, request_id: &str, now: OffsetDateTime) -> String {
        let c = &self.config;
        let request = format!(
            concat!(
                r#"<samlp:AuthnRequest xmlns:samlp="{protocol}" xmlns:saml="{assertion}" ID="{id}" Version="2.0" "#,
                r#"IssueInstant="{now}" Destination="{dest}" AssertionConsumerServiceURL="{acs}" ProtocolBinding="{binding}">"#,
                r#"<saml:Issuer>{issuer}</saml:Issuer><samlp:NameIDPolicy Format="{format}" AllowCreate="true"/>"#,
                r#"</samlp:AuthnRequest>"#
            ),
            protocol = PROTOCOL,
            assertion = ASSERTION,
            id = escape(request_id),
            now = instant(now),
            dest = escape(&c.idp_sso_url),
            acs = escape(&c.acs_url),
            binding = HTTP_POST,
            issuer = escape(&c.sp_entity_id),
            format = escape(&c.name_id_format),
        );
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflate
            .write_all(request.as_bytes())
            .expect("writing to memory");
        let deflated = deflate.finish().expect("writing to memory");
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLRequest", &STANDARD.encode(deflated))
            .finish();
        let sep = if c.idp_sso_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}{query}", c.idp_sso_url)
    }

    /// Verifies a Response (the XML, already base64-decoded) from this IdP.
    /// `in_response_to`: the ID of the request this browser started, or
    /// `None` for an IdP-initiated login (only if the provider allows it).
    pub fn verify(
        &self,
        response_xml: &str,
        in_response_to: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Verified, SamlError> {
        let c = &self.config;
        let doc = xml::parse(response_xml)?;
        let (assertion_id, response_id, response_signed, assertion_signed) = check_shape(&doc)?;
        let valued = ["NameID", "AttributeValue", "Issuer", "Audience"];
        if doc.descendants().iter().any(|e| {
            e.ns.as_deref() == Some(ASSERTION)
                && valued.contains(&e.name.as_str())
                && e.has_marker()
        }) {
            return Err(SamlError::CommentInValue);
        }
        if !(assertion_signed || (response_signed && !c.require_signed_assertion)) {
            return Err(SamlError::Unsigned);
        }
        // Every signature must verify with a pinned key. What comes back is
        // the canonical form of what the signature covers (the Response's
        // if both are signed, which contains the signed Assertion).
        let signed = XmlSec::reduce_xml_to_signed_with_allowed_algorithms(
            response_xml,
            &self.certs,
            ReduceMode::PreDigest,
            Some(&ALGORITHMS),
        )
        .map_err(|_| SamlError::BadSignature)?;
        let signed = xml::parse(&signed)?;
        let assertion =
            if signed.is(ASSERTION, "Assertion") && signed.attr("ID") == Some(&assertion_id) {
                &signed
            } else if signed.is(PROTOCOL, "Response") && signed.attr("ID") == Some(&response_id) {
                let mut found = signed.children_named(ASSERTION, "Assertion");
                match (found.next(), found.next()) {
                    (Some(a), None) if a.attr("ID") == Some(&assertion_id) => a,
                    _ => return Err(SamlError::AssertionCount),
                }
            } else {
                return Err(SamlError::BadSignature);
            };
        let skew = time::Duration::try_from(c.clock_skew).unwrap_or(time::Duration::ZERO);

        // The envelope (signed or not): the IdP's status, our ACS, the request.
        let status = doc
            .child(PROTOCOL, "Status")
            .and_then(|s| s.child(PROTOCOL, "StatusCode"))
            .and_then(|s| s.attr("Value"))
            .ok_or(SamlError::Missing("status"))?;
        if status != SUCCESS {
            let short = status.rsplit(':').next().unwrap_or(status);
            let short: String = short
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(64)
                .collect();
            return Err(SamlError::Status(short));
        }
        if let Some(issuer) = doc.child(ASSERTION, "Issuer")
            && issuer.text().trim() != c.idp_entity_id
        {
            return Err(SamlError::WrongIssuer);
        }
        match doc.attr("Destination") {
            Some(d) if d != c.acs_url => return Err(SamlError::WrongDestination),
            None if response_signed => return Err(SamlError::WrongDestination),
            _ => {}
        }
        check_in_response_to(
            doc.attr("InResponseTo"),
            in_response_to,
            c.allow_unsolicited,
        )?;

        // The signed assertion.
        let issuer = assertion
            .child(ASSERTION, "Issuer")
            .ok_or(SamlError::Missing("issuer"))?;
        if issuer.text().trim() != c.idp_entity_id
            || issuer.attr("Format").is_some_and(|f| f != ENTITY)
        {
            return Err(SamlError::WrongIssuer);
        }
        let subject = assertion
            .child(ASSERTION, "Subject")
            .ok_or(SamlError::Missing("subject"))?;
        let mut name_ids = subject.children_named(ASSERTION, "NameID");
        let name_id = match (name_ids.next(), name_ids.next()) {
            (Some(n), None) => n,
            _ => return Err(SamlError::NameId),
        };
        if name_id.elements().next().is_some()
            || name_id
                .attr("Format")
                .is_some_and(|f| f != c.name_id_format)
        {
            return Err(SamlError::NameId);
        }
        let name_id_text = name_id.text().trim().to_string();
        if name_id_text.is_empty() || name_id_text.len() > 256 {
            return Err(SamlError::NameId);
        }
        let mut valid_until = bearer_confirmation(subject, c, in_response_to, now, skew)?;

        let conditions = assertion
            .child(ASSERTION, "Conditions")
            .ok_or(SamlError::Missing("conditions"))?;
        if let Some(nb) = conditions.attr("NotBefore") {
            let nb = parse_instant(nb).ok_or(SamlError::Missing("not_before"))?;
            if now + skew < nb {
                return Err(SamlError::NotYetValid);
            }
        }
        if let Some(noa) = conditions.attr("NotOnOrAfter") {
            let noa = parse_instant(noa).ok_or(SamlError::Missing("not_on_or_after"))?;
            if now - skew >= noa {
                return Err(SamlError::Expired);
            }
            valid_until = valid_until.max(noa);
        }
        // Every AudienceRestriction must name us (SAML core 2.5.1.4).
        let restrictions: Vec<&Element> = conditions
            .children_named(ASSERTION, "AudienceRestriction")
            .collect();
        if restrictions.is_empty()
            || !restrictions.iter().all(|r| {
                r.children_named(ASSERTION, "Audience")
                    .any(|a| a.text().trim() == c.sp_entity_id)
            })
        {
            return Err(SamlError::WrongAudience);
        }

        let session_not_on_or_after = assertion
            .children_named(ASSERTION, "AuthnStatement")
            .filter_map(|s| s.attr("SessionNotOnOrAfter"))
            .filter_map(parse_instant)
            .min();
        if assertion.child(ASSERTION, "AuthnStatement").is_none() {
            return Err(SamlError::Missing("authn_statement"));
        }
        let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for statement in assertion.children_named(ASSERTION, "AttributeStatement") {
            for attribute in statement.children_named(ASSERTION, "Attribute") {
                let Some(name) = attribute.attr("Name") else {
                    continue;
                };
                let values = attributes.entry(name.to_string()).or_default();
                for v in attribute.children_named(ASSERTION, "AttributeValue") {
                    if v.elements().next().is_none() {
                        values.push(v.text().trim().to_string());
                    }
                }
            }
        }
        Ok(Verified {
            assertion_id,
            name_id: name_id_text,
            attributes,
            session_not_on_or_after,
            // Whole seconds, rounded up, for the replay cache: it must
            // outlive the last instant the assertion is accepted.
            valid_until: valid_until
                .checked_add(skew + time::Duration::seconds(1))
                .unwrap_or(valid_until),
        })
    }

    /// This SP's metadata for the IdP (entity id, ACS, NameID format).
    pub fn metadata(providers: &[&SamlProvider]) -> Option<String> {
        let first = providers.first()?;
        let c = &first.config;
        let mut acs: Vec<&str> = providers
            .iter()
            .map(|p| p.config.acs_url.as_str())
            .collect();
        acs.dedup();
        let services: String = acs
            .iter()
            .enumerate()
            .map(|(i, url)| {
                format!(
                    r#"<md:AssertionConsumerService Binding="{HTTP_POST}" Location="{}" index="{i}"{}/>"#,
                    escape(url),
                    if i == 0 { r#" isDefault="true""# } else { "" }
                )
            })
            .collect();
        Some(format!(
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                "\n",
                r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{entity}">"#,
                r#"<md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="{want}" protocolSupportEnumeration="{protocol}">"#,
                r#"<md:NameIDFormat>{format}</md:NameIDFormat>{services}"#,
                r#"</md:SPSSODescriptor></md:EntityDescriptor>"#,
                "\n"
            ),
            entity = escape(&c.sp_entity_id),
            want = c.require_signed_assertion,
            protocol = PROTOCOL,
            format = escape(&c.name_id_format),
            services = services,
        ))
    }
}

/// `InResponseTo` against the request this browser started.
fn check_in_response_to(
    given: Option<&str>,
    expected: Option<&str>,
    allow_unsolicited: bool,
) -> Result<(), SamlError> {
    use subtle::ConstantTimeEq;
    match (given, expected) {
        (Some(g), Some(e)) if bool::from(g.as_bytes().ct_eq(e.as_bytes())) => Ok(()),
        (Some(_), _) => Err(SamlError::UnknownInResponseTo),
        (None, None) if allow_unsolicited => Ok(()),
        (None, None) => Err(SamlError::Unsolicited),
        // A request was made; the answer must say it answers it.
        (None, Some(_)) => Err(SamlError::UnknownInResponseTo),
    }
}

/// A bearer SubjectConfirmation for our ACS, in time, answering our
/// request; returns its NotOnOrAfter. The error is the first confirmation's.
fn bearer_confirmation(
    subject: &Element,
    c: &SamlProviderConfig,
    in_response_to: Option<&str>,
    now: OffsetDateTime,
    skew: time::Duration,
) -> Result<OffsetDateTime, SamlError> {
    let mut first_error = None;
    for confirmation in subject.children_named(ASSERTION, "SubjectConfirmation") {
        if confirmation.attr("Method") != Some(BEARER) {
            continue;
        }
        let check = || -> Result<OffsetDateTime, SamlError> {
            let data = confirmation
                .child(ASSERTION, "SubjectConfirmationData")
                .ok_or(SamlError::Missing("subject_confirmation_data"))?;
            if data.attr("Recipient") != Some(c.acs_url.as_str()) {
                return Err(SamlError::WrongRecipient);
            }
            let noa = data
                .attr("NotOnOrAfter")
                .and_then(parse_instant)
                .ok_or(SamlError::Missing("not_on_or_after"))?;
            if now - skew >= noa {
                return Err(SamlError::Expired);
            }
            if let Some(nb) = data.attr("NotBefore") {
                let nb = parse_instant(nb).ok_or(SamlError::Missing("not_before"))?;
                if now + skew < nb {
                    return Err(SamlError::NotYetValid);
                }
            }
            check_in_response_to(
                data.attr("InResponseTo"),
                in_response_to,
                c.allow_unsolicited,
            )?;
            Ok(noa)
        };
        match check() {
            Ok(noa) => return Ok(noa),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(SamlError::Missing("bearer_confirmation")))
}

/// [`check_shape`] of a parsed document, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_check_shape(doc: &Element) -> Result<(String, String, bool, bool), SamlError> {
    check_shape(doc)
}

/// The structural rules of step 2. Returns the Assertion's ID, the
/// Response's ID, and which of the two carry a signature.
fn check_shape(doc: &Element) -> Result<(String, String, bool, bool), SamlError> {
    if !doc.is(PROTOCOL, "Response") || doc.attr("Version") != Some("2.0") {
        return Err(SamlError::NotAResponse);
    }
    let response_id = doc
        .attr("ID")
        .ok_or(SamlError::Missing("response_id"))?
        .to_string();
    let all = doc.descendants();
    let mut ids = std::collections::HashSet::new();
    for e in &all {
        if let Some(id) = e.attr("ID")
            && !ids.insert(id)
        {
            return Err(SamlError::DuplicateId);
        }
    }
    if all.iter().any(|e| e.is(ASSERTION, "EncryptedAssertion")) {
        return Err(SamlError::Encrypted);
    }
    // Exactly one Assertion and one Response in the whole document, and the
    // Assertion sits directly in the Response.
    let assertions = all.iter().filter(|e| e.is(ASSERTION, "Assertion")).count();
    let responses = all.iter().filter(|e| e.is(PROTOCOL, "Response")).count();
    let direct: Vec<&Element> = doc.children_named(ASSERTION, "Assertion").collect();
    if assertions != 1 || responses != 1 || direct.len() != 1 {
        return Err(SamlError::AssertionCount);
    }
    let assertion = direct[0];
    let assertion_id = assertion
        .attr("ID")
        .ok_or(SamlError::Missing("assertion_id"))?
        .to_string();
    // Signatures: only as a direct child of the Response or the Assertion,
    // one each, referring to that parent.
    let signatures = all.iter().filter(|e| e.is(DSIG, "Signature")).count();
    let response_sigs: Vec<&Element> = doc.children_named(DSIG, "Signature").collect();
    let assertion_sigs: Vec<&Element> = assertion.children_named(DSIG, "Signature").collect();
    if signatures != response_sigs.len() + assertion_sigs.len() {
        return Err(SamlError::SignatureShape(
            "a signature outside the Response and Assertion",
        ));
    }
    if response_sigs.len() > 1 || assertion_sigs.len() > 1 {
        return Err(SamlError::SignatureShape(
            "several signatures on one element",
        ));
    }
    for (sig, id) in response_sigs
        .iter()
        .map(|s| (*s, &response_id))
        .chain(assertion_sigs.iter().map(|s| (*s, &assertion_id)))
    {
        check_signature_shape(sig, id)?;
    }
    Ok((
        assertion_id,
        response_id,
        !response_sigs.is_empty(),
        !assertion_sigs.is_empty(),
    ))
}

/// One Reference, to `#id`, with known transforms only.
fn check_signature_shape(sig: &Element, id: &str) -> Result<(), SamlError> {
    let signed_info = sig
        .child(DSIG, "SignedInfo")
        .ok_or(SamlError::SignatureShape("no SignedInfo"))?;
    if sig.children_named(DSIG, "Object").next().is_some() {
        return Err(SamlError::SignatureShape("ds:Object"));
    }
    let c14n = signed_info
        .child(DSIG, "CanonicalizationMethod")
        .and_then(|m| m.attr("Algorithm"))
        .ok_or(SamlError::SignatureShape("no CanonicalizationMethod"))?;
    if !ALLOWED_TRANSFORMS[1..].contains(&c14n) {
        return Err(SamlError::SignatureShape("canonicalization"));
    }
    let mut references = signed_info.children_named(DSIG, "Reference");
    let reference = match (references.next(), references.next()) {
        (Some(r), None) => r,
        _ => return Err(SamlError::SignatureShape("not exactly one Reference")),
    };
    if reference.attr("URI").and_then(|u| u.strip_prefix('#')) != Some(id) {
        return Err(SamlError::SignatureShape(
            "the Reference is not to its parent",
        ));
    }
    if let Some(transforms) = reference.child(DSIG, "Transforms") {
        for t in transforms.elements() {
            if !t.is(DSIG, "Transform")
                || !t
                    .attr("Algorithm")
                    .is_some_and(|a| ALLOWED_TRANSFORMS.contains(&a))
            {
                return Err(SamlError::SignatureShape("transform"));
            }
        }
    }
    Ok(())
}

/// Decodes the `SAMLResponse` form value: base64 (line breaks allowed) of
/// UTF-8 XML no longer than `max` bytes.
pub fn decode_response(value: &str, max: usize) -> Result<String, SamlError> {
    // base64 is 4/3 of the XML, plus line breaks (CRLF every 76 characters).
    if value.len() > max / 3 * 4 + 4 + max / 16 {
        return Err(SamlError::TooLarge);
    }
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| SamlError::Malformed("not base64".into()))?;
    if bytes.len() > max {
        return Err(SamlError::TooLarge);
    }
    let text = String::from_utf8(bytes).map_err(|_| SamlError::Malformed("not UTF-8".into()))?;
    Ok(text.trim_start_matches('\u{feff}').to_string())
}

/// The `Issuer` of a response, unverified (to pick the provider of an
/// IdP-initiated login; the signature is checked against that provider's
/// pinned keys afterwards).
pub fn peek_issuer(response_xml: &str) -> Option<String> {
    let doc = xml::parse(response_xml).ok()?;
    doc.child(ASSERTION, "Issuer")
        .or_else(|| {
            doc.child(ASSERTION, "Assertion")?
                .child(ASSERTION, "Issuer")
        })
        .map(|i| i.text().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_response_to_must_answer_our_request() {
        assert_eq!(check_in_response_to(Some("_a"), Some("_a"), false), Ok(()));
        assert_eq!(
            check_in_response_to(Some("_b"), Some("_a"), true),
            Err(SamlError::UnknownInResponseTo)
        );
        assert_eq!(
            check_in_response_to(Some("_b"), None, true),
            Err(SamlError::UnknownInResponseTo)
        );
        assert_eq!(check_in_response_to(None, None, true), Ok(()));
        assert_eq!(
            check_in_response_to(None, None, false),
            Err(SamlError::Unsolicited)
        );
        assert_eq!(
            check_in_response_to(None, Some("_a"), true),
            Err(SamlError::UnknownInResponseTo)
        );
    }

    #[test]
    fn response_size_is_bounded_before_and_after_decoding() {
        let xml = "<r/>".repeat(100);
        let b64 = STANDARD.encode(&xml);
        assert_eq!(decode_response(&b64, 4096).unwrap(), xml);
        assert_eq!(decode_response(&b64, 100), Err(SamlError::TooLarge));
        assert!(matches!(
            decode_response("!!", 4096),
            Err(SamlError::Malformed(_))
        ));
    }

    #[test]
    fn request_ids_are_xml_ids_and_unique() {
        let a = new_request_id();
        assert!(a.starts_with('_') && a.len() == 33);
        assert_ne!(a, new_request_id());
    }
}
