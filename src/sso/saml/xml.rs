//! A small, strict XML tree for SAML messages, on quick-xml.
//!
//! Refused outright: a DOCTYPE (so no DTD, no internal or external
//! entities, no entity expansion), any entity reference other than the
//! five predefined ones and character references, unbound namespace
//! prefixes, text outside the root, and trees deeper or larger than the
//! limits. Comments and processing instructions are dropped, so an
//! element's [`Element::text`] is all of its text: `a<!---->b` reads
//! `ab`, never `a`.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// The SAML 2.0 protocol namespace.
pub const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
/// The SAML 2.0 assertion namespace.
pub const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
/// The XML signature namespace.
pub const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";

/// Deepest nesting accepted (a SAML response is about 8 deep).
const MAX_DEPTH: usize = 64;
/// Most elements accepted.
const MAX_ELEMENTS: usize = 20_000;

/// An element: its namespace, local name, attributes and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace URI, if bound.
    pub ns: Option<String>,
    /// Local name.
    pub name: String,
    /// Attributes other than namespace declarations.
    pub attrs: Vec<Attr>,
    /// Child elements and text, in order.
    pub children: Vec<Node>,
}

/// An attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI (unprefixed attributes have none).
    pub ns: Option<String>,
    /// Local name.
    pub name: String,
    /// The value, entities resolved.
    pub value: String,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An element.
    Element(Element),
    /// Text (CDATA included).
    Text(String),
    /// Where a comment or processing instruction was (its content dropped).
    Marker,
}

/// Why a document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// A DOCTYPE declaration.
    #[error("DOCTYPE declarations are refused")]
    Doctype,
    /// An entity reference other than the predefined ones.
    #[error("entity references are refused")]
    Entity,
    /// An XML declaration naming an encoding other than UTF-8, or a
    /// version other than 1.0.
    #[error("only UTF-8 XML 1.0 is accepted")]
    Encoding,
    /// Too deep or too many elements.
    #[error("document too deep or too large")]
    TooLarge,
    /// Not well-formed, or a prefix without a namespace.
    #[error("malformed XML: {0}")]
    Malformed(String),
}

impl Element {
    /// Whether this is `{ns}name`.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.name == name
    }

    /// An unqualified attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.name == name)
            .map(|a| a.value.as_str())
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) | Node::Marker => None,
        })
    }

    /// The child elements `{ns}name`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> {
        self.elements().filter(move |e| e.is(ns, name))
    }

    /// The first child element `{ns}name`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, name))
    }

    /// This element and every element below it, depth first.
    pub fn descendants(&self) -> Vec<&Element> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            out.push(e);
            let before = stack.len();
            stack.extend(e.elements());
            stack[before..].reverse();
        }
        out
    }

    /// Whether a comment or processing instruction is inside the element.
    pub fn has_marker(&self) -> bool {
        self.children.iter().any(|n| match n {
            Node::Marker => true,
            Node::Element(e) => e.has_marker(),
            Node::Text(_) => false,
        })
    }

    /// All text inside the element, in document order (comments and
    /// processing instructions do not cut it short).
    pub fn text(&self) -> String {
        let mut out = String::new();
        fn walk(e: &Element, out: &mut String) {
            for n in &e.children {
                match n {
                    Node::Text(t) => out.push_str(t),
                    Node::Element(c) => walk(c, out),
                    Node::Marker => {}
                }
            }
        }
        walk(self, &mut out);
        out
    }
}

fn namespace(r: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match r {
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unknown(p) => Err(XmlError::Malformed(format!(
            "unbound prefix {:?}",
            String::from_utf8_lossy(&p)
        ))),
    }
}

fn malformed(e: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed(e.to_string())
}

/// Whether `c` may appear in an XML 1.0 document (production [2] Char),
/// literally or as a character reference. libxml2 refuses a document with
/// any other: this reader must not accept what the signature check cannot
/// read the same way.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0's NameStartChar (production [4]), without `:`.
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0's NameChar (production [4a]), without `:`.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Whether `name` is a QName of Namespaces in XML (an NCName, or two
/// joined by one `:`). quick-xml takes any bytes up to a delimiter as a
/// name, while libxml2 stops at the first character that cannot be in one
/// (`<Assertion$x>` is `Assertion` to it): names must read the same.
fn is_qname(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let ncname = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
    };
    match name.split_once(':') {
        Some((prefix, local)) => ncname(prefix) && ncname(local),
        None => ncname(name),
    }
}

/// A processing instruction's target: a name without `:` other than
/// `xml` (any case), followed by white space or the end.
fn pi_target_ok(raw: &[u8]) -> bool {
    let end = raw
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(raw.len());
    let target = &raw[..end];
    is_qname(target) && !target.contains(&b':') && !target.eq_ignore_ascii_case(b"xml")
}

fn start(
    reader: &NsReader<&[u8]>,
    ns: Option<String>,
    e: &BytesStart<'_>,
) -> Result<Element, XmlError> {
    // Namespaces in XML: no element has the prefix `xmlns` (quick-xml
    // gave `<xmlns:xs/>` the xmlns namespace, libxml2 no namespace).
    if !is_qname(e.name().as_ref()) || e.name().as_ref().starts_with(b"xmlns:") {
        return Err(malformed("an element name XML does not allow"));
    }
    // Attributes are separated by white space ([40]): quick-xml reads
    // `a="1"b="2"` as two, libxml2 refuses or drops one.
    let mut quote = None;
    let mut closed = false;
    for &b in &**e {
        if closed && !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            return Err(malformed("attributes not separated by white space"));
        }
        closed = false;
        match quote {
            Some(q) if b == q => {
                quote = None;
                closed = true;
            }
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None => {}
        }
    }
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(malformed)?;
        let key = a.key;
        if !is_qname(key.as_ref()) {
            return Err(malformed("an attribute name XML does not allow"));
        }
        // XML forbids a literal `<` in an attribute value (AttValue, [10]);
        // quick-xml reads on to the quote, libxml2 (recovering) ends the
        // tag there and reads what follows as markup.
        if a.value.contains(&b'<') {
            return Err(malformed("'<' in an attribute value"));
        }
        if key.as_namespace_binding().is_some() {
            // Namespaces in XML 1.0: a prefix cannot be undeclared.
            if key.as_ref() != b"xmlns" && a.value.is_empty() {
                return Err(malformed("an empty prefixed namespace declaration"));
            }
            // The resolver reads the declared URI raw; libxml2 resolves
            // references and normalizes white space in it. No SAML
            // namespace needs either.
            if a.value
                .iter()
                .any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r'))
            {
                return Err(malformed("a reference in a namespace URI"));
            }
            continue;
        }
        let (ans, local) = reader.resolver().resolve_attribute(key);
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|_| XmlError::Entity)?;
        if !value.chars().all(is_xml_char) {
            return Err(XmlError::Entity);
        }
        attrs.push(Attr {
            ns: namespace(ans)?,
            name: String::from_utf8_lossy(local.as_ref()).into_owned(),
            value: value.into_owned(),
        });
    }
    Ok(Element {
        ns,
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        attrs,
        children: Vec::new(),
    })
}

/// Parses a whole document into its root element.
pub fn parse(xml: &str) -> Result<Element, XmlError> {
    // End-of-line handling (XML 1.0 §2.11), before anything else, as
    // libxml2 does: `\r\n` and a lone `\r` are read as `\n` (a `&#13;`
    // reference still gives `\r`).
    let normalized;
    let xml = if xml.contains('\r') {
        normalized = xml.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        xml
    };
    if !xml.chars().all(is_xml_char) {
        return Err(malformed(
            "a character XML does not allow (NUL, a control character, U+FFFE, U+FFFF)",
        ));
    }
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let push_text = |stack: &mut Vec<Element>, text: &str| -> Result<(), XmlError> {
        match stack.last_mut() {
            Some(top) => {
                if let Some(Node::Text(t)) = top.children.last_mut() {
                    t.push_str(text);
                } else {
                    top.children.push(Node::Text(text.to_string()));
                }
                Ok(())
            }
            None if text.trim().is_empty() => Ok(()),
            None => Err(XmlError::Malformed("text outside the root".into())),
        }
    };
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(malformed)?;
        let ns = match &event {
            Event::Start(_) | Event::Empty(_) => namespace(ns)?,
            _ => None,
        };
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(XmlError::Malformed("more than one root".into()));
            }
            Event::Start(e) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let el = start(&reader, ns, &e)?;
                stack.push(el);
            }
            Event::Empty(e) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let el = start(&reader, ns, &e)?;
                match stack.last_mut() {
                    Some(top) => top.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| malformed("unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(top) => top.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                // `]]>` may not appear in text ([14]).
                if t.windows(3).any(|w| w == b"]]>") {
                    return Err(malformed("']]>' in text"));
                }
                push_text(&mut stack, &t.decode().map_err(malformed)?)?
            }
            Event::CData(t) => push_text(&mut stack, &t.decode().map_err(malformed)?)?,
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|_| XmlError::Entity)?
                        .ok_or(XmlError::Entity)
                        .and_then(|c| {
                            if is_xml_char(c) {
                                Ok(c)
                            } else {
                                Err(XmlError::Entity)
                            }
                        })?
                } else {
                    match r.decode().map_err(malformed)?.as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        _ => return Err(XmlError::Entity),
                    }
                };
                push_text(&mut stack, c.encode_utf8(&mut [0; 4]))?;
            }
            // A comment may not hold `--` nor end with `-` ([15]); a
            // processing instruction's target is a name other than `xml`,
            // then white space or the end ([16], [17]). libxml2 recovers
            // from these in its own way.
            Event::Comment(c) if c.windows(2).any(|w| w == b"--") || c.ends_with(b"-") => {
                return Err(malformed("'--' in a comment"));
            }
            Event::PI(p) if !pi_target_ok(&p) => {
                return Err(malformed(
                    "a processing instruction without a proper target",
                ));
            }
            Event::Comment(_) | Event::PI(_) => {
                if let Some(top) = stack.last_mut() {
                    top.children.push(Node::Marker);
                }
            }
            Event::Decl(d) => {
                // The text is UTF-8 (it is a Rust string). A declaration
                // naming another encoding would make libxml2 (which checks
                // the signatures) read a different document than this
                // parser: UTF-7 hides markup from one and not the other.
                // The declaration is read whole and strictly (XML 1.0
                // [23]), so none that this reader skips over (a second
                // `encoding`, `ENCODING`, a stray character) can name an
                // encoding that libxml2 honours: only `version="1.0"`,
                // then an optional UTF-8 `encoding`, then an optional
                // `standalone`, once each, in that order.
                if reader.buffer_position() != d.len() as u64 + 4 {
                    return Err(malformed("XML declaration not at the start"));
                }
                check_declaration(&d)?;
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unclosed element"));
    }
    root.ok_or_else(|| malformed("no root element"))
}

/// The content of an XML declaration (after `<?`, before `?>`), by XML
/// 1.0's production [23]: `xml` S `version` Eq `"1.0"`, then optionally S
/// `encoding` Eq a UTF-8 name, then optionally S `standalone` Eq
/// `yes`|`no`, then optional S; each value in matching single or double
/// quotes; Eq is `=` with optional S around it. Anything else is refused.
fn check_declaration(decl: &[u8]) -> Result<(), XmlError> {
    fn is_space(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\r' | b'\n')
    }
    fn spaces(s: &[u8]) -> (&[u8], bool) {
        let n = s.iter().take_while(|b| is_space(**b)).count();
        (&s[n..], n > 0)
    }
    // S name Eq quoted-value; returns the value and the rest.
    fn pair<'a>(s: &'a [u8], name: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
        let (s, had_space) = spaces(s);
        let s = s.strip_prefix(name).filter(|_| had_space)?;
        let (s, _) = spaces(s);
        let s = s.strip_prefix(b"=")?;
        let (s, _) = spaces(s);
        let (&quote, s) = s.split_first()?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let end = s.iter().position(|b| *b == quote)?;
        Some((&s[..end], &s[end + 1..]))
    }
    let bad = || XmlError::Encoding;
    let rest = decl.strip_prefix(b"xml").ok_or_else(bad)?;
    let (version, mut rest) = pair(rest, b"version").ok_or_else(bad)?;
    if version != b"1.0" {
        return Err(bad());
    }
    if let Some((encoding, after)) = pair(rest, b"encoding") {
        if !encoding.eq_ignore_ascii_case(b"utf-8") && !encoding.eq_ignore_ascii_case(b"utf8") {
            return Err(bad());
        }
        rest = after;
    }
    if let Some((standalone, after)) = pair(rest, b"standalone") {
        if standalone != b"yes" && standalone != b"no" {
            return Err(bad());
        }
        rest = after;
    }
    if !spaces(rest).0.is_empty() {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_namespaces_attributes_and_whole_text() {
        let doc = parse(
            r#"<?xml version="1.0"?><a:R xmlns:a="urn:a" ID="x&amp;y"><a:N>victim@corp.com<!---->.evil.tld</a:N><b xmlns="urn:b">&#65;<![CDATA[<c>]]></b></a:R>"#,
        )
        .unwrap();
        assert!(doc.is("urn:a", "R"));
        assert_eq!(doc.attr("ID"), Some("x&y"));
        let n = doc.child("urn:a", "N").unwrap();
        assert_eq!(n.text(), "victim@corp.com.evil.tld");
        assert!(n.has_marker() && doc.has_marker());
        assert_eq!(doc.child("urn:b", "b").unwrap().text(), "A<c>");
        assert_eq!(doc.descendants().len(), 3);
    }

    #[test]
    fn refuses_dtds_entities_and_junk() {
        assert_eq!(
            parse(r#"<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>"#),
            Err(XmlError::Doctype)
        );
        assert_eq!(parse("<r>&e;</r>"), Err(XmlError::Entity));
        assert_eq!(parse(r#"<r a="&e;"/>"#), Err(XmlError::Entity));
        assert!(matches!(parse("<p:r/>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse("<r/><r/>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse("<r>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse("<r></s>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse("x<r/>"), Err(XmlError::Malformed(_))));
        assert!(matches!(
            parse(r#"<r a="1" a="2"/>"#),
            Err(XmlError::Malformed(_))
        ));
        for decl in [
            r#"<?xml version="1.0" encoding="UTF-7"?><r/>"#,
            r#"<?xml version="1.0" encoding="ISO-8859-1"?><r/>"#,
            r#"<?xml version="1.1"?><r/>"#,
        ] {
            assert_eq!(parse(decl), Err(XmlError::Encoding), "{decl}");
        }
        assert!(parse(r#"<?xml version="1.0" encoding="utf-8"?><r/>"#).is_ok());
        assert!(parse("<?xml version='1.0' encoding = 'UTF-8' standalone='yes' ?>\n<r/>").is_ok());
    }

    /// Found by the `saml_xml` fuzz target (libxml2 differential):
    /// `<rIs$$r/>` was the element `rIs$$r` here and `rIs` to libxml2; a
    /// name must be a QName, so `<saml:Assertion$x>` cannot be an
    /// Assertion to the signature check and something else to the shape
    /// rules.
    #[test]
    fn names_must_be_qnames() {
        for bad in [
            "<rIs$$r/>",
            "<saml:Assertion$x/>",
            "<a:b:c/>",
            "<:r/>",
            "<r: />",
            "<1r/>",
            "<-r/>",
            "<r a$b=\"1\"/>",
            "<r :a=\"1\"/>",
            "<r a:b:c=\"1\"/>",
            "<r>\u{0}</r>",
            // Found next: libxml2 (recovering) ended the tag at the `<`
            // and moved the rest of the Assertion out of it.
            "<r a=\"x</r><evil/>\"/>",
            "<r a='<'/>",
            // And the rest of XML's well-formedness that quick-xml lets
            // through and libxml2 recovers from in its own way.
            "<r a=\"1\"b=\"2\"/>",
            "<r><!-- a -- b --></r>",
            "<r><!-- a ---></r>",
            "<r>]]></r>",
            "<r><?pi?><?AuthnInstant\"1.0\"?></r>",
            "<?AuthnInstant\"1.0\" encoding=\"UTF-7\"[?><r/>",
            "<r><?xml x?></r>",
            "<r><?a:b x?></r>",
            "<r xmlns:a=\"\"/>",
            // A namespace URI was raw here and resolved by libxml2.
            "<r xmlns:b=\"ur1;&amp;$lt;\"><b:c/></r>",
            "<s:r xmlns:s=\"urn:oasis:names:tc:SAML:2.0:&#97;ssertion\"/>",
            "<s:r xmlns:s=\"urn:oasis:names:tc:SA\tML:2.0:assertion\"/>",
            "<r xmlns=\"urn:a\nb\"/>",
            "<xmlns:xs />",
        ] {
            assert!(matches!(parse(bad), Err(XmlError::Malformed(_))), "{bad}");
        }
        for ok in [
            "<r/>",
            "<x:r xmlns:x=\"urn:x\"/>",
            "<r-1.a_b\u{B7}\u{E9}/>",
            "<\u{E9}t\u{E9} a-b.c=\"1\" _d=\"2\"/>",
            "<r a='1'\n\tb=\"2\" ><!-- a - b --><?pi x?><?xml-stylesheet a?>]]</r >",
            "<r xmlns=\"\"/>",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    /// Found by the `saml_xml` fuzz target (libxml2 differential): a `\r`
    /// in text stayed `\r` here and was `\n` to libxml2 (and so to the
    /// signature's canonical form).
    #[test]
    fn line_ends_are_normalized_as_xml_says() {
        let doc = parse("<r a=\"x\r\ny\">a\r\nb\rc&#13;<![CDATA[d\r\ne]]></r>").unwrap();
        assert_eq!(doc.text(), "a\nb\nc\rd\ne");
        assert_eq!(doc.attr("a"), Some("x y"));
    }

    /// Found by the `saml_xml` fuzz target (libxml2 differential): NUL and
    /// other characters outside XML's Char, literal or as references, were
    /// accepted here and refused by libxml2.
    #[test]
    fn characters_xml_does_not_allow_are_refused() {
        assert!(matches!(
            parse("<r>a\u{0}b</r>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            parse("<r a=\"\u{1}\"/>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            parse("<r>\u{FFFE}</r>"),
            Err(XmlError::Malformed(_))
        ));
        assert_eq!(parse("<r>&#0;</r>"), Err(XmlError::Entity));
        assert_eq!(parse("<r>&#x1F;</r>"), Err(XmlError::Entity));
        assert_eq!(parse("<r a=\"&#1;\"/>"), Err(XmlError::Entity));
        assert_eq!(parse("<r>&#xFFFF;</r>"), Err(XmlError::Entity));
        let ok = parse("<r a=\"&#9;&#xA;&#x10000;\">\t&#13;\u{E000}\u{10FFFF}</r>").unwrap();
        assert_eq!(ok.attr("a"), Some("\t\n\u{10000}"));
    }

    /// Found by the `saml_xml` fuzz target (libxml2 differential): a
    /// declaration this reader skipped over but libxml2 reads differently
    /// (or refuses), so an encoding could hide from the shape checker.
    #[test]
    fn a_declaration_is_read_whole_and_strictly() {
        for decl in [
            "<?xml version='1.0' encodi)ng='UTF-4'?><r>+ADw-x/+AD4-</r>",
            r#"<?xml version="1.0" encoding="UTF-8" encoding="UTF-7"?><r>+ADw-x/+AD4-</r>"#,
            r#"<?xml version="1.0" ENCODING="UTF-7"?><r>+ADw-x/+AD4-</r>"#,
            r#"<?xml version="1.0" standalone="yes" encoding="UTF-7"?><r/>"#,
            r#"<?xml version="1.0" standalone="maybe"?><r/>"#,
            r#"<?xml version="1.0"encoding="UTF-8"?><r/>"#,
            r#"<?xml encoding="UTF-8" version="1.0"?><r/>"#,
            r#"<?xml version="1.0' encoding="UTF-8"?><r/>"#,
            r#"<?xml version="1.0" x="y"?><r/>"#,
            r#"<?xml?><r/>"#,
        ] {
            assert_eq!(parse(decl), Err(XmlError::Encoding), "{decl}");
        }
        // Only at the very start.
        for late in [
            " <?xml version=\"1.0\"?><r/>",
            "<r><?xml version=\"1.0\"?></r>",
        ] {
            assert!(parse(late).is_err(), "{late}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(parse(&deep), Err(XmlError::TooLarge));
    }
}
