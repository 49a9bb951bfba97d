//! The SOAP side of EWS: the two requests notigate sends (`CreateItem` to
//! send a message, `GetFolder` to test a connection) and a reader for what
//! Exchange answers (response messages on HTTP 200, SOAP faults on HTTP 500).
//!
//! The message goes out as `t:Message` fields rather than as `t:MimeContent`:
//! - Exchange fills in From, Sender and the Send-As check from `t:From`, so
//!   the seed's "sender differs from the account" rule is enforced the same
//!   way Outlook's is, with `ErrorSendAsDenied` rather than a silent rewrite;
//! - Exchange builds the MIME itself (charsets, encodings, the text
//!   alternative of an HTML body), so there is no second MIME generator to
//!   keep in line with the SMTP backend's;
//! - every field is checked by the server's schema, which our tests' fake
//!   mirrors element for element.
//!
//! The price is the strict element order of the schema (types.xsd, ItemType
//! then MessageType): any other order is `ErrorSchemaValidation`. The writer
//! below emits the elements in that order and nothing else.

use std::io;

use base64::Engine as _;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesRef, BytesStart, BytesText, Event};
use quick_xml::reader::Reader;

use crate::domain::{ExchangeVersion, Mailbox, OutgoingMessage, Priority};

pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const TYPES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const MESSAGES_NS: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";

/// The `SOAPAction` header value of an operation, as the EWS Managed API
/// sends it (Exchange routes by the body, but proxies sometimes log it).
pub fn soap_action(operation: &str) -> String {
    format!("\"{MESSAGES_NS}/{operation}\"")
}

type W = Writer<Vec<u8>>;

/// `CreateItem` that sends `message` (`SendOnly`, or `SendAndSaveCopy` into
/// Sent Items when `save_copy`).
pub fn create_item(
    message: &OutgoingMessage,
    version: ExchangeVersion,
    save_copy: bool,
) -> io::Result<Vec<u8>> {
    envelope(version, |w| {
        let disposition = if save_copy {
            "SendAndSaveCopy"
        } else {
            "SendOnly"
        };
        w.create_element("m:CreateItem")
            .with_attribute(("MessageDisposition", disposition))
            .write_inner_content(|w| {
                if save_copy {
                    // SendOnly with a SavedItemFolderId is an error
                    // (ErrorInvalidSendItemSaveSettings), so only here.
                    w.create_element("m:SavedItemFolderId")
                        .write_inner_content(|w| {
                            w.create_element("t:DistinguishedFolderId")
                                .with_attribute(("Id", "sentitems"))
                                .write_empty()?;
                            Ok(())
                        })?;
                }
                w.create_element("m:Items").write_inner_content(|w| {
                    w.create_element("t:Message")
                        .write_inner_content(|w| write_message(w, message))?;
                    Ok(())
                })?;
                Ok(())
            })?;
        Ok(())
    })
}

/// `GetFolder` of the mailbox root with ids only: the cheapest call that
/// needs a working, authenticated mailbox session.
pub fn get_folder_root(version: ExchangeVersion) -> io::Result<Vec<u8>> {
    envelope(version, |w| {
        w.create_element("m:GetFolder").write_inner_content(|w| {
            w.create_element("m:FolderShape").write_inner_content(|w| {
                text_element(w, "t:BaseShape", "IdOnly")?;
                Ok(())
            })?;
            w.create_element("m:FolderIds").write_inner_content(|w| {
                w.create_element("t:DistinguishedFolderId")
                    .with_attribute(("Id", "msgfolderroot"))
                    .write_empty()?;
                Ok(())
            })?;
            Ok(())
        })?;
        Ok(())
    })
}

fn envelope(
    version: ExchangeVersion,
    body: impl FnOnce(&mut W) -> io::Result<()>,
) -> io::Result<Vec<u8>> {
    let mut w = Writer::new(Vec::with_capacity(4096));
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    w.create_element("soap:Envelope")
        .with_attribute(("xmlns:soap", SOAP_NS))
        .with_attribute(("xmlns:t", TYPES_NS))
        .with_attribute(("xmlns:m", MESSAGES_NS))
        .write_inner_content(|w| {
            w.create_element("soap:Header").write_inner_content(|w| {
                // Always the configured version, never the one the server
                // reports in ServerVersionInfo (e.g. "V2017_07_11", which is
                // not a valid RequestServerVersion value).
                w.create_element("t:RequestServerVersion")
                    .with_attribute(("Version", version.as_ews()))
                    .write_empty()?;
                Ok(())
            })?;
            w.create_element("soap:Body").write_inner_content(body)?;
            Ok(())
        })?;
    Ok(w.into_inner())
}

/// The children of `t:Message`, in schema order: Subject, Body, Attachments,
/// Importance, InReplyTo, ExtendedProperty*, ToRecipients, CcRecipients,
/// BccRecipients, From, InternetMessageId, References, ReplyTo.
fn write_message(w: &mut W, m: &OutgoingMessage) -> io::Result<()> {
    text_element(w, "t:Subject", &m.subject)?;

    // EWS takes one body. With both an HTML and a text body we send the HTML:
    // Exchange derives the text/plain alternative from it when it builds the
    // MIME, whereas a text body would lose the formatting and inline images.
    let (body_type, body) = match (&m.html_body, &m.text_body) {
        (Some(html), _) => ("HTML", html.as_str()),
        (None, Some(text)) => ("Text", text.as_str()),
        (None, None) => ("Text", ""),
    };
    w.create_element("t:Body")
        .with_attribute(("BodyType", body_type))
        .write_text_content(BytesText::new(&xml_safe(body)))?;

    if !m.attachments.is_empty() {
        w.create_element("t:Attachments").write_inner_content(|w| {
            for a in &m.attachments {
                // AttachmentType then FileAttachmentType order: Name,
                // ContentType, ContentId, IsInline, Content.
                w.create_element("t:FileAttachment")
                    .write_inner_content(|w| {
                        text_element(w, "t:Name", &a.filename)?;
                        text_element(w, "t:ContentType", &a.content_type)?;
                        if let Some(cid) = &a.content_id {
                            text_element(w, "t:ContentId", cid)?;
                        }
                        let inline = if a.content_id.is_some() {
                            "true"
                        } else {
                            "false"
                        };
                        text_element(w, "t:IsInline", inline)?;
                        let content = base64::engine::general_purpose::STANDARD.encode(&a.content);
                        text_element(w, "t:Content", &content)?;
                        Ok(())
                    })?;
            }
            Ok(())
        })?;
    }

    let importance = match m.priority {
        Priority::Low => "Low",
        Priority::Normal => "Normal",
        Priority::High => "High",
    };
    text_element(w, "t:Importance", importance)?;

    // In-Reply-To and References have their own item properties; Exchange
    // writes those into the MIME headers itself and would not take them as
    // custom InternetHeaders.
    let header = |name: &str| {
        m.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(v) = header("In-Reply-To") {
        text_element(w, "t:InReplyTo", v)?;
    }

    // Custom headers: t:InternetMessageHeaders is read-only on create
    // (ErrorInvalidPropertySet); a header is set as a named property of the
    // InternetHeaders property set instead.
    for (name, value) in &m.headers {
        if name.eq_ignore_ascii_case("In-Reply-To") || name.eq_ignore_ascii_case("References") {
            continue;
        }
        w.create_element("t:ExtendedProperty")
            .write_inner_content(|w| {
                w.create_element("t:ExtendedFieldURI")
                    .with_attribute(("DistinguishedPropertySetId", "InternetHeaders"))
                    .with_attribute(("PropertyName", name.as_str()))
                    .with_attribute(("PropertyType", "String"))
                    .write_empty()?;
                text_element(w, "t:Value", value)?;
                Ok(())
            })?;
    }

    recipients(w, "t:ToRecipients", &m.to)?;
    recipients(w, "t:CcRecipients", &m.cc)?;
    recipients(w, "t:BccRecipients", &m.bcc)?;

    // t:From, not t:Sender: it is the visible sender, and the one Exchange
    // checks Send-As rights for.
    w.create_element("t:From")
        .write_inner_content(|w| mailbox(w, &m.from))?;

    // The same Message-ID on every retry lets receivers drop duplicates of an
    // at-least-once delivery. The property is writable until the item is sent
    // (exchangelib sets it the same way).
    text_element(w, "t:InternetMessageId", &m.message_id())?;

    if let Some(v) = header("References") {
        text_element(w, "t:References", v)?;
    }

    recipients(w, "t:ReplyTo", &m.reply_to)?;
    Ok(())
}

fn recipients(w: &mut W, tag: &str, list: &[Mailbox]) -> io::Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    w.create_element(tag).write_inner_content(|w| {
        for mb in list {
            mailbox(w, mb)?;
        }
        Ok(())
    })?;
    Ok(())
}

fn mailbox(w: &mut W, mb: &Mailbox) -> io::Result<()> {
    w.create_element("t:Mailbox").write_inner_content(|w| {
        if !mb.display_name.is_empty() {
            text_element(w, "t:Name", &mb.display_name)?;
        }
        text_element(w, "t:EmailAddress", mb.address.as_str())?;
        Ok(())
    })?;
    Ok(())
}

fn text_element(w: &mut W, tag: &str, text: &str) -> io::Result<()> {
    w.create_element(tag)
        .write_text_content(BytesText::new(&xml_safe(text)))?;
    Ok(())
}

/// XML 1.0 cannot carry most C0 control characters, not even as character
/// references; a body with a stray form feed would make the whole request
/// malformed. They become U+FFFD instead.
fn xml_safe(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}');
    if s.chars().any(bad) {
        s.chars()
            .map(|c| if bad(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// One `*ResponseMessage` of an HTTP 200 answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseMessage {
    /// `Success`, `Warning` or `Error`.
    pub class: String,
    pub code: String,
    pub text: String,
    /// `MessageXml/t:Value` entries (name, value).
    pub values: Vec<(String, String)>,
    /// The first `t:ItemId/@Id` (SaveOnly answers carry one; SendOnly none).
    pub item_id: Option<String>,
}

/// A SOAP fault (Exchange answers every request-level error this way, with
/// HTTP 500).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `detail/ResponseCode`, else the local part of `faultcode`.
    pub code: String,
    pub fault_string: String,
    /// `detail/Message`.
    pub message: String,
    pub values: Vec<(String, String)>,
    /// `MessageXml/t:Violation` of a schema-validation fault.
    pub violation: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    pub messages: Vec<ResponseMessage>,
    pub fault: Option<Fault>,
    /// `Major.Minor.Build.MinorBuild` from `ServerVersionInfo`, for test
    /// reports only.
    pub server_build: Option<String>,
}

impl Fault {
    pub fn value(&self, name: &str) -> Option<&str> {
        lookup(&self.values, name)
    }

    /// The server's own explanation: faultstring (it carries the schema
    /// violation), else the detail message.
    pub fn words(&self) -> &str {
        if !self.fault_string.is_empty() {
            &self.fault_string
        } else {
            &self.message
        }
    }
}

impl ResponseMessage {
    pub fn value(&self, name: &str) -> Option<&str> {
        lookup(&self.values, name)
    }
}

fn lookup<'a>(values: &'a [(String, String)], name: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads an EWS answer. Namespace prefixes differ between Exchange versions
/// (and proxies), so elements are matched by local name in their context.
/// `Err` means the body is not a SOAP envelope at all.
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut answer = Answer::default();
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut value_name: Option<String> = None;
    let mut saw_envelope = false;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("malformed XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(e) => {
                let name = local_name(&e);
                open(&mut answer, &stack, &name, &e, &mut value_name)?;
                if name == "Envelope" {
                    saw_envelope = true;
                }
                stack.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                let name = local_name(&e);
                open(&mut answer, &stack, &name, &e, &mut value_name)?;
                stack.push(name);
                text.clear();
                close(&mut answer, &stack, "", &mut value_name);
                stack.pop();
            }
            Event::End(_) => {
                close(&mut answer, &stack, &text, &mut value_name);
                stack.pop();
                text.clear();
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|e| e.to_string())?;
                text.push_str(&s);
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| e.to_string())?;
                text.push_str(&s);
            }
            Event::GeneralRef(r) => text.push_str(&resolve_ref(&r)?),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_envelope {
        return Err("not a SOAP envelope".into());
    }
    Ok(answer)
}

fn local_name(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, String> {
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.local_name().as_ref() == name.as_bytes() {
            return Ok(Some(
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| e.to_string())?
                    .into_owned(),
            ));
        }
    }
    Ok(None)
}

fn resolve_ref(r: &BytesRef<'_>) -> Result<String, String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| format!("unknown entity &{name};"))
}

fn in_response_message(stack: &[String]) -> bool {
    stack.iter().any(|n| n.ends_with("ResponseMessage"))
}

fn open(
    answer: &mut Answer,
    stack: &[String],
    name: &str,
    e: &BytesStart<'_>,
    value_name: &mut Option<String>,
) -> Result<(), String> {
    let parent = stack.last().map(String::as_str);
    match name {
        "ServerVersionInfo" => {
            let part = |n| attr(e, n).map(|v| v.unwrap_or_default());
            answer.server_build = Some(format!(
                "{}.{}.{}.{}",
                part("MajorVersion")?,
                part("MinorVersion")?,
                part("MajorBuildNumber")?,
                part("MinorBuildNumber")?
            ));
        }
        n if n.ends_with("ResponseMessage") && parent == Some("ResponseMessages") => {
            answer.messages.push(ResponseMessage {
                class: attr(e, "ResponseClass")?.unwrap_or_default(),
                ..Default::default()
            });
        }
        "Fault" if parent == Some("Body") => answer.fault = Some(Fault::default()),
        "ItemId" if in_response_message(stack) => {
            if let Some(m) = answer.messages.last_mut()
                && m.item_id.is_none()
            {
                m.item_id = attr(e, "Id")?;
            }
        }
        "Value" if parent == Some("MessageXml") => *value_name = attr(e, "Name")?,
        _ => {}
    }
    Ok(())
}

/// Called with the element still on top of `stack`.
fn close(answer: &mut Answer, stack: &[String], text: &str, value_name: &mut Option<String>) {
    let Some(name) = stack.last().map(String::as_str) else {
        return;
    };
    let parent = stack
        .len()
        .checked_sub(2)
        .and_then(|i| stack.get(i))
        .map(String::as_str);
    let text = text.trim();
    if let Some(fault) = answer.fault.as_mut()
        && stack.iter().any(|n| n == "Fault")
    {
        match (name, parent) {
            // "a:ErrorServerBusy" → "ErrorServerBusy"; detail/ResponseCode wins.
            ("faultcode", _) if fault.code.is_empty() => {
                fault.code = text.rsplit(':').next().unwrap_or(text).to_owned();
            }
            ("faultstring", _) => fault.fault_string = text.to_owned(),
            ("ResponseCode", Some("detail")) => fault.code = text.to_owned(),
            ("Message", Some("detail")) => fault.message = text.to_owned(),
            ("Violation", Some("MessageXml")) => fault.violation = Some(text.to_owned()),
            ("Value", Some("MessageXml")) => {
                if let Some(n) = value_name.take() {
                    fault.values.push((n, text.to_owned()));
                }
            }
            _ => {}
        }
        return;
    }
    let Some(m) = answer.messages.last_mut() else {
        return;
    };
    if !in_response_message(stack) {
        return;
    }
    match (name, parent) {
        ("ResponseCode", Some(p)) if p.ends_with("ResponseMessage") => m.code = text.to_owned(),
        ("MessageText", Some(p)) if p.ends_with("ResponseMessage") => m.text = text.to_owned(),
        ("Value", Some("MessageXml")) => {
            if let Some(n) = value_name.take() {
                m.values.push((n, text.to_owned()));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Attachment, EmailAddress};

    fn mb(addr: &str, name: &str) -> Mailbox {
        Mailbox {
            address: EmailAddress::parse(addr).unwrap(),
            display_name: name.into(),
        }
    }

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            id: "0193".into(),
            from: mb("alice@corp.example.com", "Алиса"),
            to: vec![mb("bob@example.com", "")],
            cc: vec![],
            bcc: vec![],
            reply_to: vec![],
            subject: "a < b & \"c\"".into(),
            text_body: Some("plain\u{c}text".into()),
            html_body: None,
            attachments: vec![Attachment {
                filename: "x.bin".into(),
                content_type: "application/octet-stream".into(),
                content: vec![0, 1, 2],
                content_id: None,
            }],
            headers: vec![("X-Tag".into(), "1 & 2".into())],
            priority: Priority::High,
        }
    }

    #[test]
    fn create_item_escapes_text_and_replaces_control_characters() {
        let xml = create_item(&message(), ExchangeVersion::Exchange2016, false).unwrap();
        let xml = String::from_utf8(xml).unwrap();
        assert!(xml.contains("<t:Subject>a &lt; b &amp; &quot;c&quot;</t:Subject>"));
        assert!(xml.contains("plain\u{fffd}text"));
        assert!(xml.contains(r#"MessageDisposition="SendOnly""#));
        assert!(!xml.contains("SavedItemFolderId"));
        assert!(xml.contains(r#"<t:RequestServerVersion Version="Exchange2016"/>"#));
        assert!(xml.contains("<t:Name>Алиса</t:Name>"));
        assert!(xml.contains("<t:Content>AAEC</t:Content>"));
    }

    #[test]
    fn save_copy_names_sent_items() {
        let xml = create_item(&message(), ExchangeVersion::Exchange2010Sp2, true).unwrap();
        let xml = String::from_utf8(xml).unwrap();
        assert!(xml.contains(r#"MessageDisposition="SendAndSaveCopy""#));
        assert!(xml.contains(r#"<t:DistinguishedFolderId Id="sentitems"/>"#));
    }

    #[test]
    fn reads_an_item_error() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" xmlns:h="t"/></s:Header><s:Body><m:CreateItemResponse xmlns:m="m"><m:ResponseMessages><m:CreateItemResponseMessage ResponseClass="Error"><m:MessageText>Recipient &apos;x&apos; &#x41;</m:MessageText><m:ResponseCode>ErrorInvalidRecipients</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse></s:Body></s:Envelope>"#;
        let a = parse_answer(body).unwrap();
        assert_eq!(a.server_build.as_deref(), Some("15.1.2507.6"));
        assert_eq!(a.fault, None);
        assert_eq!(a.messages.len(), 1);
        assert_eq!(a.messages[0].class, "Error");
        assert_eq!(a.messages[0].code, "ErrorInvalidRecipients");
        assert_eq!(a.messages[0].text, "Recipient 'x' A");
    }

    #[test]
    fn reads_a_fault_with_back_off() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="t">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="e">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="e">busy</e:Message><t:MessageXml xmlns:t="t"><t:Value Name="BackOffMilliseconds">1500</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#;
        let a = parse_answer(body).unwrap();
        let f = a.fault.unwrap();
        assert_eq!(f.code, "ErrorServerBusy");
        assert_eq!(f.value("BackOffMilliseconds"), Some("1500"));
        assert_eq!(f.message, "busy");
        assert!(f.words().starts_with("The server cannot"));
    }

    #[test]
    fn an_html_page_is_not_an_answer() {
        assert!(parse_answer(b"<html><body>500</body></html>").is_err());
        assert!(parse_answer(b"").is_err());
    }
}
