//! The SAML response reader: the strict XML reader (`sso::saml::xml`)
//! and the shape rules run on what it accepts.
//!
//! Property (differential): for every document the strict reader
//! accepts and libxml2 reads with samael's options (those of
//! `XmlParser::default()`, recovery included: the parse xmlsec checks the
//! signature on), both see the same element tree: the same namespaces and
//! local names in the same order, the same attributes (local name and
//! value), and the same text. A document read one way by
//! the shape checker and another by the signature check is the class of
//! the UTF-7 differential found in review. The shape rules must not panic.
#![no_main]

use std::collections::BTreeMap;

use costguard::sso::saml::xml::{self, Element, Node};
use libfuzzer_sys::fuzz_target;
use libxml::parser::{Parser, ParserOptions};
use libxml::tree::{Node as XNode, NodeType};

fn ours_text(e: &Element) -> String {
    e.text()
}

fn children(e: &Element) -> Vec<&Element> {
    e.children
        .iter()
        .filter_map(|n| match n {
            Node::Element(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn compare(ours: &Element, theirs: &XNode, doc: &str) {
    let ns = theirs.get_namespace().map(|n| n.get_href());
    assert_eq!(
        (ours.ns.as_deref(), ours.name.as_str()),
        (ns.as_deref(), theirs.get_name().as_str()),
        "element differs in {doc:?}"
    );
    let mut mine: BTreeMap<&str, &str> = BTreeMap::new();
    let mut unique = true;
    for a in &ours.attrs {
        unique &= mine.insert(a.name.as_str(), a.value.as_str()).is_none();
    }
    if unique {
        let theirs_attrs: BTreeMap<String, String> = theirs.get_properties().into_iter().collect();
        let mine: BTreeMap<String, String> = mine
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(mine, theirs_attrs, "attributes of <{}> in {doc:?}", ours.name);
    }
    let kids = children(ours);
    let theirs_kids: Vec<XNode> = theirs
        .get_child_elements()
        .into_iter()
        .filter(|n| n.get_type() == Some(NodeType::ElementNode))
        .collect();
    assert_eq!(kids.len(), theirs_kids.len(), "children of <{}> in {doc:?}", ours.name);
    for (a, b) in kids.iter().zip(&theirs_kids) {
        compare(a, b, doc);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(root) = xml::parse(doc) else {
        return;
    };
    let _ = costguard::fuzzing::saml_shape(&root);
    // libxml2 exactly as samael (so xmlsec's signature check) reads the
    // response: `XmlParser::default()`, whose options include *recovery*
    // (a malformed document still yields a tree). Refusing is safe (the
    // signature check then fails); reading another tree is not.
    let Ok(theirs) = Parser::default().parse_string_with_options(
        doc.as_bytes(),
        ParserOptions {
            no_error: true,
            no_warning: true,
            ..ParserOptions::default()
        },
    ) else {
        return;
    };
    let Some(theirs_root) = theirs.get_root_element() else {
        return;
    };
    compare(&root, &theirs_root, doc);
    assert_eq!(ours_text(&root), theirs_root.get_content(), "text differs in {doc:?}");
});
