//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature,
//! never in a release build): parsers that see attacker bytes but are
//! private to their module. Each is a thin call of the real function, so
//! the targets fuzz exactly what serves requests. (Everything else the
//! targets call is already public API.)

/// The SAML response's structural rules (`saml::check_shape`) on a
/// document the strict reader accepted: the Assertion's ID, the Response's
/// ID, and which of the two carry a signature; `Err` with the reason.
#[cfg(feature = "saml")]
pub fn saml_shape(
    doc: &crate::sso::saml::xml::Element,
) -> Result<(String, String, bool, bool), String> {
    crate::sso::saml::fuzz_check_shape(doc).map_err(|e| e.to_string())
}
