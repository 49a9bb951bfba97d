#!/usr/bin/env python3
"""Fake Microsoft Exchange Web Services (EWS) endpoint for notigate's integration tests.

It answers the way an on-premises Exchange 2016 behind IIS 10 does, for the few
operations notigate uses (CreateItem to send mail, GetFolder as "test
connection"):

* HTTP/1.1 with keep-alive (ThreadingHTTPServer); optional TLS.
* Authentication: none, Basic, or a real server-side NTLM check (pyspnego's
  acceptor) bound to the TCP connection, as IIS does: NEGOTIATE -> 401 with the
  CHALLENGE -> AUTHENTICATE, all on one connection; an AUTHENTICATE that
  arrives on another connection fails. After a successful NTLM handshake the
  connection stays authenticated (IIS' default for connection-based auth).
* SOAP 1.1, checked against the EWS schema order (types.xsd ItemType then
  MessageType, AttachmentType then FileAttachmentType, EmailAddressType ...):
  any out-of-order or unknown child is an HTTP 500 SOAP fault
  ErrorSchemaValidation, with the .NET validator's wording.
* Item-level errors (ErrorSendAsDenied, ErrorInvalidRecipients, ...) are HTTP 200
  with ResponseClass="Error"; request-level ones (schema, server version,
  throttling) are HTTP 500 SOAP faults.
* Fault injection: --busy-first (ErrorServerBusy + BackOffMilliseconds),
  --http500-first (IIS error page), --delay-ms.
* Recording: --spool DIR gets one JSON file per request that passed
  authentication, plus DIR/stats.json.

Run `ews_server.py --help` for the flags; tests/servers/README.md documents
the spool format. Prints `READY <port>` on stdout once listening; SIGTERM or
SIGINT stop it with exit status 0.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from xml.sax.saxutils import escape as _xml_escape

from lxml import etree

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
E_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
XS_NS = "http://www.w3.org/2001/XMLSchema"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XML_NS = "http://www.w3.org/XML/1998/namespace"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"

# RequestServerVersion values this fake accepts (what Exchange 2013/2016/2019
# on-premises accept from clients; there is no "Exchange2019").
ACCEPTED_VERSIONS = (
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2016",
)

MSG_SEND_AS_DENIED = (
    "The user account which was used to submit this request does not have the right to send mail "
    "on behalf of the specified sending account., Cannot submit message."
)
MSG_SERVER_BUSY = "The server cannot service this request right now. Try again later."
MSG_SCHEMA = "The request failed schema validation."
MSG_INVALID_VERSION = "The specified server version is invalid."
MSG_NO_RECIPIENTS = "At least one recipient isn't valid., A message can't be sent because it contains no recipients."
MSG_UNRESOLVED = (
    "At least one recipient isn't valid., Recipient '{0}' is not resolved. "
    "All recipients must be resolved before a message can be submitted."
)
MSG_PROPERTY_SET = "Set action is invalid for property."
MSG_DISPOSITION_REQUIRED = "MessageDisposition attribute is required."
MSG_SEND_SAVE_SETTINGS = "SavedItemFolderId is not allowed when MessageDisposition is SendOnly."
MSG_INVALID_REQUEST = "The request is invalid."
MSG_FOLDER_NOT_FOUND = "The specified object was not found in the store."
MSG_ID_MALFORMED = "Id is malformed."

IIS_SERVER = "Microsoft-IIS/10.0"

# --------------------------------------------------------------------------------------------
# A small schema validator for the part of the EWS schema a mail-sending client touches.
# Content models follow types.xsd / messages.xsd (Exchange 2013+ ordering); error texts follow
# the .NET XmlSchemaValidator that Exchange uses, because that is what a client sees in the
# ErrorSchemaValidation fault.
# --------------------------------------------------------------------------------------------

UNBOUNDED = 1 << 30


class P:
    """One element particle: name, type name, minOccurs, maxOccurs, namespace."""

    __slots__ = ("name", "type", "min", "max", "ns")

    def __init__(self, name: str, type_: str, min_: int = 0, max_: int = 1, ns: str = T_NS):
        self.name, self.type, self.min, self.max, self.ns = name, type_, min_, max_, ns


# Enumerated simple types of types.xsd that a sending client can get wrong.
ENUMS = {
    "BodyTypeType": ("HTML", "Text"),
    "ImportanceChoicesType": ("Low", "Normal", "High"),
    "SensitivityChoicesType": ("Normal", "Personal", "Private", "Confidential"),
    "MailboxTypeType": (
        "Unknown", "OneOff", "Mailbox", "PublicDL", "PrivateDL", "Contact", "PublicFolder",
        "GroupMailbox", "ImplicitContact", "User",
    ),
    "MessageDispositionType": ("SaveOnly", "SendOnly", "SendAndSaveCopy"),
    "DefaultShapeNamesType": ("IdOnly", "Default", "AllProperties", "PcxPeopleSearch"),
    "CalendarItemCreateOrDeleteOperationType": ("SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"),
    "DistinguishedPropertySetType": (
        "Meeting", "Appointment", "Common", "PublicStrings", "Address", "InternetHeaders",
        "CalendarAssistant", "UnifiedMessaging", "Task", "Sharing",
    ),
    "MapiPropertyTypeType": (
        "ApplicationTime", "ApplicationTimeArray", "Binary", "BinaryArray", "Boolean", "CLSID",
        "CLSIDArray", "Currency", "CurrencyArray", "Double", "DoubleArray", "Error", "Float",
        "FloatArray", "Integer", "IntegerArray", "Long", "LongArray", "Null", "Object",
        "ObjectArray", "Short", "ShortArray", "SystemTime", "SystemTimeArray", "String",
        "StringArray",
    ),
    "DistinguishedFolderIdNameType": (
        "calendar", "contacts", "deleteditems", "drafts", "inbox", "journal", "notes", "outbox",
        "sentitems", "tasks", "msgfolderroot", "publicfoldersroot", "root", "junkemail",
        "searchfolders", "voicemail", "recoverableitemsroot", "recoverableitemsdeletions",
        "recoverableitemsversions", "recoverableitemspurges", "archiveroot",
        "archivemsgfolderroot", "archivedeleteditems", "archiveinbox",
        "archiverecoverableitemsroot", "archiverecoverableitemsdeletions",
        "archiverecoverableitemsversions", "archiverecoverableitemspurges", "syncissues",
        "conflicts", "localfailures", "serverfailures", "recipientcache", "quickcontacts",
        "conversationhistory", "adminauditlogs", "todosearch", "mycontacts", "directory",
        "imcontactlist", "peopleconnect", "favorites",
    ),
}

_DT_RE = re.compile(r"^-?\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_LANG_RE = re.compile(r"^[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*$")
_GUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")


def _xsd_name(type_name: str) -> str:
    if type_name in ("string", "boolean", "int", "long", "dateTime", "base64Binary", "language",
                     "unsignedShort"):
        return f"{XS_NS}:{type_name}"
    return f"{T_NS}:{type_name}"


def check_simple(type_name: str, value: str) -> Optional[str]:
    """Return the .NET-style reason a value is invalid for a simple type, or None."""
    v = value.strip()
    if type_name in ("string", "any"):
        return None
    if type_name == "NonEmptyStringType":
        if len(value) < 1:
            return "The actual length is less than the MinLength value."
        return None
    if type_name in ENUMS:
        if value not in ENUMS[type_name]:
            return "The Enumeration constraint failed."
        return None
    if type_name == "boolean":
        if v not in ("true", "false", "1", "0"):
            return f"The string '{value}' is not a valid Boolean value."
        return None
    if type_name in ("int", "long", "ReminderMinutesBeforeStartType"):
        if not _INT_RE.match(v):
            return f"The string '{value}' is not a valid {'Int32' if type_name != 'long' else 'Int64'} value."
        return None
    if type_name == "dateTime":
        if not _DT_RE.match(v):
            return f"The string '{value}' is not a valid AllXsd value."
        return None
    if type_name == "base64Binary":
        compact = re.sub(r"\s+", "", value)
        try:
            base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            return "Invalid length for a Base-64 char array or string." if len(compact) % 4 else \
                "The input is not a valid Base-64 string as it contains a non-base 64 character."
        return None
    if type_name == "language":
        if not _LANG_RE.match(v):
            return f"The '{value}' value is not a valid language."
        return None
    if type_name == "GuidType":
        if not _GUID_RE.match(v):
            return "The Pattern constraint failed."
        return None
    return None


class Complex:
    """A complex type: attributes and a content model.

    kind: "seq" (sequence of particles), "choice" (repeated choice between particles,
    occurrences min..max), "simple" (text of a simple type), "empty", "any" (lax).
    """

    def __init__(self, kind: str, particles: Optional[List[P]] = None, attrs: Optional[Dict[str, Tuple[str, bool]]] = None,
                 text_type: str = "string", min_: int = 1, max_: int = 1):
        self.kind = kind
        self.particles = particles or []
        self.attrs = attrs or {}
        self.text_type = text_type
        self.min, self.max = min_, max_


ITEM_TYPE_PARTICLES = [
    P("MimeContent", "MimeContentType"),
    P("ItemId", "ItemIdType"),
    P("ParentFolderId", "FolderIdType"),
    P("ItemClass", "string"),
    P("Subject", "string"),
    P("Sensitivity", "SensitivityChoicesType"),
    P("Body", "BodyType"),
    P("Attachments", "NonEmptyArrayOfAttachmentsType"),
    P("DateTimeReceived", "dateTime"),
    P("Size", "int"),
    P("Categories", "ArrayOfStringsType"),
    P("Importance", "ImportanceChoicesType"),
    P("InReplyTo", "string"),
    P("IsSubmitted", "boolean"),
    P("IsDraft", "boolean"),
    P("IsFromMe", "boolean"),
    P("IsResend", "boolean"),
    P("IsUnmodified", "boolean"),
    P("InternetMessageHeaders", "NonEmptyArrayOfInternetHeadersType"),
    P("DateTimeSent", "dateTime"),
    P("DateTimeCreated", "dateTime"),
    P("ResponseObjects", "any"),
    P("ReminderDueBy", "dateTime"),
    P("ReminderIsSet", "boolean"),
    P("ReminderNextTime", "dateTime"),
    P("ReminderMinutesBeforeStart", "ReminderMinutesBeforeStartType"),
    P("DisplayCc", "string"),
    P("DisplayTo", "string"),
    P("DisplayBcc", "string"),
    P("HasAttachments", "boolean"),
    P("ExtendedProperty", "ExtendedPropertyType", 0, UNBOUNDED),
    P("Culture", "language"),
    P("EffectiveRights", "any"),
    P("LastModifiedName", "string"),
    P("LastModifiedTime", "dateTime"),
    P("IsAssociated", "boolean"),
    P("WebClientReadFormQueryString", "string"),
    P("WebClientEditFormQueryString", "string"),
    P("ConversationId", "ItemIdType"),
    P("UniqueBody", "BodyType"),
    P("Flag", "any"),
    P("StoreEntryId", "base64Binary"),
    P("InstanceKey", "base64Binary"),
    P("NormalizedBody", "BodyType"),
    P("EntityExtractionResult", "any"),
    P("PolicyTag", "any"),
    P("ArchiveTag", "any"),
    P("RetentionDate", "dateTime"),
    P("Preview", "string"),
    P("RightsManagementLicenseData", "any"),
    P("PredictedActionReasons", "any"),
    P("IsClutter", "boolean"),
    P("BlockStatus", "boolean"),
    P("HasBlockedImages", "boolean"),
    P("TextBody", "BodyType"),
    P("IconIndex", "any"),
    P("SearchKey", "base64Binary"),
    P("SortKey", "long"),
    P("Hashtags", "ArrayOfStringsType"),
    P("Mentions", "ArrayOfRecipientsType"),
    P("MentionedMe", "boolean"),
    P("MentionsPreview", "any"),
    P("MentionsEx", "any"),
    P("AppliedHashtags", "any"),
    P("AppliedHashtagsPreview", "any"),
    P("Likes", "any"),
    P("LikesPreview", "any"),
    P("PendingSocialActivityTagIds", "ArrayOfStringsType"),
    P("AtAllMention", "boolean"),
    P("CanDelete", "boolean"),
    P("InferenceClassification", "any"),
]

MESSAGE_TYPE_PARTICLES = ITEM_TYPE_PARTICLES + [
    P("Sender", "SingleRecipientType"),
    P("ToRecipients", "ArrayOfRecipientsType"),
    P("CcRecipients", "ArrayOfRecipientsType"),
    P("BccRecipients", "ArrayOfRecipientsType"),
    P("IsReadReceiptRequested", "boolean"),
    P("IsDeliveryReceiptRequested", "boolean"),
    P("ConversationIndex", "base64Binary"),
    P("ConversationTopic", "string"),
    P("From", "SingleRecipientType"),
    P("InternetMessageId", "string"),
    P("IsRead", "boolean"),
    P("IsResponseRequested", "boolean"),
    P("References", "string"),
    P("ReplyTo", "ArrayOfRecipientsType"),
    P("ReceivedBy", "SingleRecipientType"),
    P("ReceivedRepresenting", "SingleRecipientType"),
    P("ApprovalRequestData", "any"),
    P("VotingInformation", "any"),
    P("ReminderMessageData", "any"),
    P("MessageSafety", "any"),
    P("SenderSMTPAddress", "any"),
    P("MailboxGuids", "any"),
    P("PublishedCalendarItemIcs", "string"),
    P("PublishedCalendarItemName", "string"),
]

ATTACHMENT_TYPE_PARTICLES = [
    P("AttachmentId", "AttachmentIdType"),
    P("Name", "string"),
    P("ContentType", "string"),
    P("ContentId", "string"),
    P("ContentLocation", "string"),
    P("AttachmentOriginalUrl", "string"),
    P("Size", "int"),
    P("LastModifiedTime", "dateTime"),
    P("IsInline", "boolean"),
]

# Items an EWS CreateItem may carry (NonEmptyArrayOfAllItemsType); only Message is understood
# in depth, the others are accepted by the schema check and answered with an item-level error.
OTHER_ITEM_NAMES = (
    "Item", "SharingMessage", "CalendarItem", "Contact", "DistributionList", "MeetingMessage",
    "MeetingRequest", "MeetingResponse", "MeetingCancellation", "Task", "PostItem", "ReplyToItem",
    "ForwardItem", "ReplyAllToItem", "AcceptItem", "TentativelyAcceptItem", "DeclineItem",
    "CancelCalendarItem", "RemoveItem", "SuppressReadReceipt", "PostReplyItem",
    "AcceptSharingInvitation", "AddItemToMyCalendar", "ProposeNewTime",
)

TYPES: Dict[str, Complex] = {
    "MessageType": Complex("seq", MESSAGE_TYPE_PARTICLES),
    "MimeContentType": Complex("simple", attrs={"CharacterSet": ("string", False)}),
    "ItemIdType": Complex("empty", attrs={"Id": ("string", True), "ChangeKey": ("string", False)}),
    "FolderIdType": Complex("empty", attrs={"Id": ("string", True), "ChangeKey": ("string", False)}),
    "AttachmentIdType": Complex("empty", attrs={"Id": ("string", True), "RootItemId": ("string", False),
                                                "RootItemChangeKey": ("string", False)}),
    "BodyType": Complex("simple", attrs={"BodyType": ("BodyTypeType", True), "IsTruncated": ("boolean", False)}),
    "NonEmptyArrayOfAttachmentsType": Complex("choice", [
        P("ItemAttachment", "ItemAttachmentType"),
        P("FileAttachment", "FileAttachmentType"),
        P("ReferenceAttachment", "any"),
    ], min_=1, max_=UNBOUNDED),
    "FileAttachmentType": Complex("seq", ATTACHMENT_TYPE_PARTICLES + [
        P("IsContactPhoto", "boolean"),
        P("Content", "base64Binary"),
    ]),
    "ItemAttachmentType": Complex("seq", ATTACHMENT_TYPE_PARTICLES + [P("Message", "MessageType")]
                                  + [P(n, "any") for n in ("Item", "CalendarItem", "Contact", "Task", "PostItem")]),
    "ArrayOfStringsType": Complex("choice", [P("String", "string")], min_=0, max_=UNBOUNDED),
    "NonEmptyArrayOfInternetHeadersType": Complex("seq", [P("InternetMessageHeader", "InternetHeaderType", 1, UNBOUNDED)]),
    "InternetHeaderType": Complex("simple", attrs={"HeaderName": ("string", True)}),
    "ExtendedPropertyType": Complex("seq", [
        P("ExtendedFieldURI", "PathToExtendedFieldType", 1, 1),
        # xs:choice(Value | Values) — modelled as its two alternatives below (see validate()).
    ]),
    "PathToExtendedFieldType": Complex("empty", attrs={
        "DistinguishedPropertySetId": ("DistinguishedPropertySetType", False),
        "PropertySetId": ("GuidType", False),
        "PropertyTag": ("string", False),
        "PropertyName": ("string", False),
        "PropertyId": ("int", False),
        "PropertyType": ("MapiPropertyTypeType", True),
    }),
    "NonEmptyArrayOfPropertyValuesType": Complex("seq", [P("Value", "string", 1, UNBOUNDED)]),
    "SingleRecipientType": Complex("choice", [P("Mailbox", "EmailAddressType")], min_=1, max_=1),
    "ArrayOfRecipientsType": Complex("choice", [P("Mailbox", "EmailAddressType")], min_=0, max_=UNBOUNDED),
    "EmailAddressType": Complex("seq", [
        P("Name", "string"),
        P("EmailAddress", "NonEmptyStringType"),
        P("RoutingType", "NonEmptyStringType"),
        P("MailboxType", "MailboxTypeType"),
        P("ItemId", "ItemIdType"),
        P("OriginalDisplayName", "string"),
    ]),
    # messages.xsd
    "CreateItemType": Complex("seq", [
        P("SavedItemFolderId", "TargetFolderIdType", 0, 1, M_NS),
        P("Items", "NonEmptyArrayOfAllItemsType", 1, 1, M_NS),
    ], attrs={"MessageDisposition": ("MessageDispositionType", False),
              "SendMeetingInvitations": ("CalendarItemCreateOrDeleteOperationType", False)}),
    "TargetFolderIdType": Complex("choice", [
        P("FolderId", "FolderIdType"),
        P("DistinguishedFolderId", "DistinguishedFolderIdType"),
        P("AddressListId", "any"),
    ], min_=1, max_=1),
    "DistinguishedFolderIdType": Complex("seq", [P("Mailbox", "EmailAddressType")],
                                         attrs={"Id": ("DistinguishedFolderIdNameType", True),
                                                "ChangeKey": ("string", False)}),
    "NonEmptyArrayOfAllItemsType": Complex("choice", [P("Message", "MessageType")] +
                                           [P(n, "any") for n in OTHER_ITEM_NAMES], min_=1, max_=UNBOUNDED),
    "GetFolderType": Complex("seq", [
        P("FolderShape", "FolderResponseShapeType", 1, 1, M_NS),
        P("FolderIds", "NonEmptyArrayOfBaseFolderIdsType", 1, 1, M_NS),
    ]),
    "FolderResponseShapeType": Complex("seq", [
        P("BaseShape", "DefaultShapeNamesType", 1, 1),
        P("AdditionalProperties", "any"),
    ]),
    "NonEmptyArrayOfBaseFolderIdsType": Complex("choice", [
        P("FolderId", "FolderIdType"),
        P("DistinguishedFolderId", "DistinguishedFolderIdType"),
    ], min_=1, max_=UNBOUNDED),
}

# Properties a client may not set on CreateItem (Exchange answers ErrorInvalidPropertySet per item).
READ_ONLY_ITEM_PROPS = {
    "ItemId": "item:ItemId", "ParentFolderId": "item:ParentFolderId",
    "DateTimeReceived": "item:DateTimeReceived", "Size": "item:Size",
    "IsSubmitted": "item:IsSubmitted", "IsDraft": "item:IsDraft", "IsFromMe": "item:IsFromMe",
    "IsResend": "item:IsResend", "IsUnmodified": "item:IsUnmodified",
    "InternetMessageHeaders": "item:InternetMessageHeaders", "DateTimeSent": "item:DateTimeSent",
    "DateTimeCreated": "item:DateTimeCreated", "ResponseObjects": "item:ResponseObjects",
    "DisplayCc": "item:DisplayCc", "DisplayTo": "item:DisplayTo", "HasAttachments": "item:HasAttachments",
    "EffectiveRights": "item:EffectiveRights", "LastModifiedName": "item:LastModifiedName",
    "LastModifiedTime": "item:LastModifiedTime", "IsAssociated": "item:IsAssociated",
    "WebClientReadFormQueryString": "item:WebClientReadFormQueryString",
    "WebClientEditFormQueryString": "item:WebClientEditFormQueryString",
    "ConversationId": "item:ConversationId", "UniqueBody": "item:UniqueBody",
    "TextBody": "item:TextBody", "Preview": "item:Preview", "NormalizedBody": "item:NormalizedBody",
    "ConversationIndex": "message:ConversationIndex", "ConversationTopic": "message:ConversationTopic",
    "ReceivedBy": "message:ReceivedBy", "ReceivedRepresenting": "message:ReceivedRepresenting",
}


class SchemaError(Exception):
    def __init__(self, violation: str, elem: Optional[etree._Element] = None):
        super().__init__(violation)
        self.violation = violation
        self.elem = elem


def _local(el: etree._Element) -> Tuple[str, str]:
    q = etree.QName(el)
    return q.namespace or "", q.localname


def _expected_list(particles: List[P], start: int, count: int) -> List[P]:
    """Particles that may come next: from `start` on, up to and including the first required one."""
    out: List[P] = []
    for i in range(start, len(particles)):
        p = particles[i]
        used = count if i == start else 0
        if used >= p.max:
            continue
        out.append(p)
        if used < p.min:
            break
    return out


def _fmt_expected(parts: List[P]) -> str:
    if not parts:
        return ""
    # .NET groups the names by namespace; all our particles in one list share one namespace
    # except CreateItem/GetFolder (messages namespace), so group consecutively.
    groups: List[Tuple[str, List[str]]] = []
    for p in parts:
        if groups and groups[-1][0] == p.ns:
            groups[-1][1].append(p.name)
        else:
            groups.append((p.ns, [p.name]))
    text = " ".join(f"'{', '.join(names)}' in namespace '{ns}'" + ("" if i == len(groups) - 1 else " as well as")
                    for i, (ns, names) in enumerate(groups))
    return f" List of possible elements expected: {text}."


def _elem_desc(el: etree._Element) -> str:
    ns, name = _local(el)
    return f"The element '{name}' in namespace '{ns}'"


def _check_attrs(el: etree._Element, ctype: Complex) -> None:
    for qname, value in el.attrib.items():
        q = etree.QName(qname)
        if q.namespace in (XSI_NS, XMLNS_NS, XML_NS, SOAP_NS):
            continue
        name = q.localname if q.namespace is None else qname
        if q.namespace is not None or name not in ctype.attrs:
            raise SchemaError(f"The '{q.localname}' attribute is not declared.", el)
        atype, _req = ctype.attrs[name]
        reason = check_simple(atype, value)
        if reason:
            raise SchemaError(
                f"The '{name}' attribute is invalid - The value '{value}' is invalid according to its "
                f"datatype '{_xsd_name(atype)}' - {reason}", el)
    for name, (_atype, required) in ctype.attrs.items():
        if required and name not in el.attrib:
            raise SchemaError(f"The required attribute '{name}' is missing.", el)


def _element_children(el: etree._Element) -> List[etree._Element]:
    out = []
    for c in el:
        if isinstance(c.tag, str):
            out.append(c)
    return out


def _check_no_text(el: etree._Element, expected: str = "") -> None:
    texts = [el.text] + [c.tail for c in el]
    if any(t and t.strip() for t in texts):
        raise SchemaError(f"{_elem_desc(el)} cannot contain text.{expected}", el)


def validate(el: etree._Element, type_name: str) -> None:
    """Validate `el` against the named type; raise SchemaError like .NET would."""
    if type_name == "any":
        return
    ctype = TYPES.get(type_name)
    if ctype is None:
        # simple type element: text only, no attributes
        for c in el:
            if isinstance(c.tag, str):
                raise SchemaError(
                    f"{_elem_desc(el)} cannot contain child element '{etree.QName(c).localname}' because the "
                    f"parent element's content model is text only.", c)
        for qname in el.attrib:
            q = etree.QName(qname)
            if q.namespace in (XSI_NS, XMLNS_NS, XML_NS):
                continue
            raise SchemaError(f"The '{q.localname}' attribute is not declared.", el)
        value = el.text or ""
        reason = check_simple(type_name, value)
        if reason:
            ns, name = _local(el)
            raise SchemaError(
                f"The '{ns}:{name}' element is invalid - The value '{value}' is invalid according to its "
                f"datatype '{_xsd_name(type_name)}' - {reason}", el)
        return

    _check_attrs(el, ctype)

    if ctype.kind == "simple":
        for c in el:
            if isinstance(c.tag, str):
                raise SchemaError(
                    f"{_elem_desc(el)} cannot contain child element '{etree.QName(c).localname}' because the "
                    f"parent element's content model is text only.", c)
        return
    if ctype.kind == "empty":
        for c in el:
            if isinstance(c.tag, str):
                ns, name = _local(c)
                raise SchemaError(
                    f"{_elem_desc(el)} cannot contain child element '{name}' because the parent element's "
                    f"content model is empty.", c)
        if el.text and el.text.strip():
            raise SchemaError(f"{_elem_desc(el)} cannot contain text because the content model is empty.", el)
        return

    children = _element_children(el)

    if ctype.kind == "choice":
        _check_no_text(el, _fmt_expected(ctype.particles))
        by_name = {(p.ns, p.name): p for p in ctype.particles}
        for idx, c in enumerate(children):
            key = _local(c)
            if key not in by_name or idx >= ctype.max:
                exp = ctype.particles if idx < ctype.max else []
                raise SchemaError(
                    f"{_elem_desc(el)} has invalid child element '{key[1]}' in namespace '{key[0]}'."
                    f"{_fmt_expected(exp)}", c)
            validate(c, by_name[key].type)
        if len(children) < ctype.min:
            raise SchemaError(f"{_elem_desc(el)} has incomplete content.{_fmt_expected(ctype.particles)}", el)
        return

    # sequence
    particles = list(ctype.particles)
    if type_name == "ExtendedPropertyType":
        return _validate_extended_property(el, children)
    _check_no_text(el, _fmt_expected(_expected_list(particles, 0, 0)))
    i, count = 0, 0
    for c in children:
        key = _local(c)
        start, start_count = i, count
        while True:
            if i >= len(particles):
                exp = _expected_list(particles, start, start_count)
                raise SchemaError(
                    f"{_elem_desc(el)} has invalid child element '{key[1]}' in namespace '{key[0]}'."
                    f"{_fmt_expected(exp)}", c)
            p = particles[i]
            if (p.ns, p.name) == key and count < p.max:
                count += 1
                validate(c, p.type)
                break
            if count < p.min:
                exp = _expected_list(particles, start, start_count)
                raise SchemaError(
                    f"{_elem_desc(el)} has invalid child element '{key[1]}' in namespace '{key[0]}'."
                    f"{_fmt_expected(exp)}", c)
            i, count = i + 1, 0
    # anything still required?
    for j in range(i, len(particles)):
        used = count if j == i else 0
        if used < particles[j].min:
            raise SchemaError(
                f"{_elem_desc(el)} has incomplete content.{_fmt_expected(_expected_list(particles, i, count))}", el)


def _validate_extended_property(el: etree._Element, children: List[etree._Element]) -> None:
    uri_p = P("ExtendedFieldURI", "PathToExtendedFieldType", 1, 1)
    value_ps = [P("Value", "string"), P("Values", "NonEmptyArrayOfPropertyValuesType")]
    if not children:
        raise SchemaError(f"{_elem_desc(el)} has incomplete content.{_fmt_expected([uri_p])}", el)
    first = children[0]
    if _local(first) != (T_NS, "ExtendedFieldURI"):
        ns, name = _local(first)
        raise SchemaError(f"{_elem_desc(el)} has invalid child element '{name}' in namespace '{ns}'."
                          f"{_fmt_expected([uri_p])}", first)
    validate(first, "PathToExtendedFieldType")
    if len(children) < 2:
        raise SchemaError(f"{_elem_desc(el)} has incomplete content.{_fmt_expected(value_ps)}", el)
    second = children[1]
    key = _local(second)
    if key == (T_NS, "Value"):
        validate(second, "string")
    elif key == (T_NS, "Values"):
        validate(second, "NonEmptyArrayOfPropertyValuesType")
    else:
        raise SchemaError(f"{_elem_desc(el)} has invalid child element '{key[1]}' in namespace '{key[0]}'."
                          f"{_fmt_expected(value_ps)}", second)
    if len(children) > 2:
        ns, name = _local(children[2])
        raise SchemaError(f"{_elem_desc(el)} has invalid child element '{name}' in namespace '{ns}'.", children[2])


# --------------------------------------------------------------------------------------------
# Response builders (shapes as Exchange 2013/2016 sends them)
# --------------------------------------------------------------------------------------------

def x(s: Any) -> str:
    return _xml_escape(str(s), {'"': "&quot;"})


class ServerInfo:
    def __init__(self, major: int, minor: int, build: int, minor_build: int, version: str):
        self.major, self.minor, self.build, self.minor_build, self.version = major, minor, build, minor_build, version

    def header(self) -> str:
        return (
            "<s:Header>"
            f'<h:ServerVersionInfo MajorVersion="{self.major}" MinorVersion="{self.minor}" '
            f'MajorBuildNumber="{self.build}" MinorBuildNumber="{self.minor_build}" Version="{x(self.version)}" '
            f'xmlns:h="{T_NS}" xmlns="{T_NS}" xmlns:xsd="{XS_NS}" xmlns:xsi="{XSI_NS}"/>'
            "</s:Header>"
        )


def envelope_ok(info: ServerInfo, body_inner: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP_NS}">'
        f"{info.header()}"
        f'<s:Body xmlns:xsi="{XSI_NS}" xmlns:xsd="{XS_NS}">{body_inner}</s:Body>'
        "</s:Envelope>"
    ).encode("utf-8")


def soap_fault(code: str, faultstring: str, message: str, message_xml: str = "") -> bytes:
    mx = f'<t:MessageXml xmlns:t="{T_NS}">{message_xml}</t:MessageXml>' if message_xml else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP_NS}">'
        "<s:Body><s:Fault>"
        f'<faultcode xmlns:a="{T_NS}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{x(faultstring)}</faultstring>'
        "<detail>"
        f'<e:ResponseCode xmlns:e="{E_NS}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{E_NS}">{x(message)}</e:Message>'
        f"{mx}"
        "</detail>"
        "</s:Fault></s:Body></s:Envelope>"
    ).encode("utf-8")


def response_message(op: str, ok: bool, code: str = "NoError", text: str = "", inner: str = "",
                     message_xml: str = "") -> str:
    if ok:
        return (f'<m:{op}ResponseMessage ResponseClass="Success">'
                f"<m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>")
    mx = f"<m:MessageXml>{message_xml}</m:MessageXml>" if message_xml else ""
    return (f'<m:{op}ResponseMessage ResponseClass="Error">'
            f"<m:MessageText>{x(text)}</m:MessageText>"
            f"<m:ResponseCode>{code}</m:ResponseCode>"
            f"<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{mx}{inner}"
            f"</m:{op}ResponseMessage>")


def response_wrapper(op: str, messages: List[str]) -> str:
    return (f'<m:{op}Response xmlns:m="{M_NS}" xmlns:t="{T_NS}">'
            f"<m:ResponseMessages>{''.join(messages)}</m:ResponseMessages></m:{op}Response>")


IIS_500_PAGE = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    '<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n'
    '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>\r\n'
    "<title>500 - Internal server error.</title>\r\n</head>\r\n<body>\r\n"
    '<div id="header"><h1>Server Error</h1></div>\r\n<div id="content">\r\n <div class="content-container"><fieldset>\r\n'
    "  <h2>500 - Internal server error.</h2>\r\n"
    "  <h3>There is a problem with the resource you are looking for, and it cannot be displayed.</h3>\r\n"
    " </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
).encode("ascii")

IIS_401_PAGE = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    '<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n'
    '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>\r\n'
    "<title>401 - Unauthorized: Access is denied due to invalid credentials.</title>\r\n</head>\r\n<body>\r\n"
    '<div id="header"><h1>Server Error</h1></div>\r\n<div id="content">\r\n <div class="content-container"><fieldset>\r\n'
    "  <h2>401 - Unauthorized: Access is denied due to invalid credentials.</h2>\r\n"
    "  <h3>You do not have permission to view this directory or page using the credentials that you supplied.</h3>\r\n"
    " </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
).encode("ascii")

IIS_404_PAGE = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    '<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n'
    "<title>404 - File or directory not found.</title>\r\n</head>\r\n<body>\r\n"
    "<h2>404 - File or directory not found.</h2>\r\n"
    "<h3>The resource you are looking for might have been removed, had its name changed, or is temporarily unavailable.</h3>\r\n"
    "</body>\r\n</html>\r\n"
).encode("ascii")


# --------------------------------------------------------------------------------------------
# Users and authentication
# --------------------------------------------------------------------------------------------

class Users:
    """Accounts from a pyspnego NTLM_USER_FILE style file: DOMAIN:user:password per line."""

    def __init__(self, path: Optional[str]):
        self.entries: List[Tuple[str, str, str]] = []
        if path:
            with open(path, "r", encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\r\n")
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    parts = line.split(":", 2)
                    if len(parts) != 3:
                        raise SystemExit(f"bad line in users file (want DOMAIN:user:password): {line!r}")
                    self.entries.append((parts[0], parts[1], parts[2]))

    def find(self, domain: Optional[str], user: str) -> Optional[Tuple[str, str, str]]:
        for d, u, p in self.entries:
            if u.lower() != user.lower():
                continue
            if domain is None or d.lower() == domain.lower():
                return d, u, p
        return None

    def check_basic(self, login: str, password: str) -> Optional[str]:
        """Accept `user`, `DOMAIN\\user` and `user@domain`; return the canonical DOMAIN\\user."""
        candidates: List[Tuple[Optional[str], str]] = []
        if "\\" in login:
            d, u = login.split("\\", 1)
            candidates.append((d, u))
        elif "@" in login:
            u, dom = login.rsplit("@", 1)
            for d, eu, _p in self.entries:
                if eu.lower() == u.lower() and (dom.lower() == d.lower() or dom.lower().startswith(d.lower() + ".")
                                                 or dom.split(".")[0].lower() == d.lower()):
                    candidates.append((d, u))
            # a UPN whose suffix is the mail domain (user@example.com) is also common
            candidates.append((None, u))
        else:
            candidates.append((None, login))
        for d, u in candidates:
            for ed, eu, ep in self.entries:
                if eu.lower() == u.lower() and (d is None or ed.lower() == d.lower()) and ep == password:
                    return f"{ed}\\{eu}" if ed else eu
        return None

    def canonical(self, principal: Optional[str]) -> Optional[str]:
        if not principal:
            return principal
        if "\\" in principal:
            d, u = principal.split("\\", 1)
        else:
            d, u = None, principal
        hit = self.find(d or None, u) or self.find(None, u)
        if hit:
            return f"{hit[0]}\\{hit[1]}" if hit[0] else hit[1]
        return principal

    def write_ntlm_file(self, path: str) -> None:
        """The file pyspnego's acceptor reads: every account once with its domain and once with an empty
        domain, because Windows also accepts an AUTHENTICATE whose DomainName is empty."""
        lines = []
        for d, u, p in self.entries:
            lines.append(f"{d}:{u}:{p}")
        for d, u, p in self.entries:
            if d:
                lines.append(f":{u}:{p}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def tls_server_end_point(cert_path: str) -> bytes:
    """RFC 5929 tls-server-end-point channel binding data for a PEM certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    with open(cert_path, "rb") as f:
        data = f.read()
    cert = x509.load_pem_x509_certificate(data)
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    from cryptography.hazmat.primitives.serialization import Encoding
    der = cert.public_bytes(Encoding.DER)
    h = hashes.Hash(algo)
    h.update(der)
    return b"tls-server-end-point:" + h.finalize()


# --------------------------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------------------------

class State:
    def __init__(self, args: argparse.Namespace, users: Users):
        self.args = args
        self.users = users
        self.lock = threading.Lock()
        self.seq = 0
        self.soap_seq = 0
        self.stats: Dict[str, Any] = {
            "requests": 0,
            "connections": 0,
            "soap_requests": 0,
            "auth_failures": 0,
            "auth_challenges": 0,
            "unauthenticated": 0,
            "ntlm_authenticated": 0,
            "basic_authenticated": 0,
            "responses": {},
        }
        self.info = ServerInfo(*args.server_build, args.server_version_string)
        self.channel_binding: Optional[bytes] = None
        if args.tls and args.extended_protection == "required":
            self.channel_binding = tls_server_end_point(args.cert)
        if args.spool:
            os.makedirs(args.spool, exist_ok=True)
            # continue after the highest record already there, so a restarted server never overwrites
            for name in os.listdir(args.spool):
                if name.endswith(".json") and name[:-5].isdigit():
                    self.seq = max(self.seq, int(name[:-5]))
            self._write_stats_locked()

    def bump(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + n
            self._write_stats_locked()

    def count_response(self, code: str) -> None:
        with self.lock:
            r = self.stats["responses"]
            r[code] = r.get(code, 0) + 1
            self._write_stats_locked()

    def next_soap(self) -> int:
        with self.lock:
            self.soap_seq += 1
            self.stats["soap_requests"] = self.soap_seq
            self._write_stats_locked()
            return self.soap_seq

    def _write_stats_locked(self) -> None:
        if not self.args.spool:
            return
        atomic_write_json(os.path.join(self.args.spool, "stats.json"), self.stats)

    def record(self, entry: Dict[str, Any]) -> None:
        if not self.args.spool:
            return
        with self.lock:
            self.seq += 1
            n = self.seq
        entry["seq"] = n
        atomic_write_json(os.path.join(self.args.spool, f"{n}.json"), entry)


def atomic_write_json(path: str, obj: Any) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def folder_id(name: str) -> Tuple[str, str]:
    """A stable, realistic-looking FolderId/ChangeKey pair for a distinguished folder."""
    digest = hashlib.sha256(b"notigate-fake-ews:" + name.encode()).digest()
    # Real ids are base64 and start with "AAMkA" (bytes 00 03 24 00); change keys of folders
    # start with "AQAAABYAAAA", those of items with "CQAAABYAAAA".
    fid = base64.b64encode(b"\x00\x03\x24\x00" + digest + b"\x00\x2e\x00\x00\x00\x00\x00" + digest[:16] + b"\x01\x00").decode()
    ck = base64.b64encode(b"\x01\x00\x00\x00\x16\x00\x00\x00" + digest[:20]).decode()
    return fid, ck


FOLDERS = {
    "root": ("", "IPF.Note"),
    "msgfolderroot": ("Top of Information Store", "IPF.Note"),
    "inbox": ("Inbox", "IPF.Note"),
    "sentitems": ("Sent Items", "IPF.Note"),
    "drafts": ("Drafts", "IPF.Note"),
    "outbox": ("Outbox", "IPF.Note"),
    "deleteditems": ("Deleted Items", "IPF.Note"),
    "junkemail": ("Junk Email", "IPF.Note"),
}
FOLDER_BY_ID = {folder_id(k)[0]: k for k in FOLDERS}

FOLDER_SHAPES = {
    "IdOnly": ("FolderId",),
    "Default": ("FolderId", "DisplayName", "TotalCount", "ChildFolderCount", "UnreadCount"),
    "AllProperties": ("FolderId", "ParentFolderId", "FolderClass", "DisplayName", "TotalCount",
                      "ChildFolderCount", "EffectiveRights", "UnreadCount"),
}
FOLDER_PARENT = {"root": None, "msgfolderroot": "root"}


def folder_xml(name: str, props: Any) -> str:
    """The children of a t:Folder, in BaseFolderType/FolderType schema order."""
    display, fclass = FOLDERS[name]
    fid, ck = folder_id(name)
    parent = FOLDER_PARENT.get(name, "msgfolderroot")
    out = []
    if "FolderId" in props:
        out.append(f'<t:FolderId Id="{fid}" ChangeKey="{ck}"/>')
    if "ParentFolderId" in props and parent:
        pid, pck = folder_id(parent)
        out.append(f'<t:ParentFolderId Id="{pid}" ChangeKey="{pck}"/>')
    if "FolderClass" in props and name != "root":
        out.append(f"<t:FolderClass>{fclass}</t:FolderClass>")
    if "DisplayName" in props:
        out.append(f"<t:DisplayName>{x(display)}</t:DisplayName>")
    if "TotalCount" in props:
        out.append("<t:TotalCount>0</t:TotalCount>")
    if "ChildFolderCount" in props:
        out.append(f"<t:ChildFolderCount>{15 if name in ('msgfolderroot', 'root') else 0}</t:ChildFolderCount>")
    if "EffectiveRights" in props:
        out.append("<t:EffectiveRights><t:CreateAssociated>true</t:CreateAssociated>"
                   "<t:CreateContents>true</t:CreateContents><t:CreateHierarchy>true</t:CreateHierarchy>"
                   "<t:Delete>true</t:Delete><t:Modify>true</t:Modify><t:Read>true</t:Read>"
                   "<t:ViewPrivateItems>true</t:ViewPrivateItems></t:EffectiveRights>")
    if "DistinguishedFolderId" in props:
        out.append(f"<t:DistinguishedFolderId>{name}</t:DistinguishedFolderId>")
    if "UnreadCount" in props:
        out.append("<t:UnreadCount>0</t:UnreadCount>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------------------------

class EwsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = IIS_SERVER
    sys_version = ""
    timeout = 120  # IIS' default connection timeout

    state: State  # set on the class by main()

    # ---- per-connection lifecycle ------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.ntlm_ctx = None          # pending NTLM/SPNEGO acceptor context (handshake in progress)
        self.ntlm_scheme = None       # "NTLM" or "Negotiate" as used by the client
        self.conn_user: Optional[str] = None   # principal this TCP connection authenticated as
        self.conn_scheme: Optional[str] = None
        self.state.bump("connections")

    def version_string(self) -> str:
        return IIS_SERVER

    def log_message(self, fmt: str, *args: Any) -> None:
        if not self.state.args.quiet:
            sys.stderr.write("ews_server: %s - %s\n" % (self.address_string(), fmt % args))

    # ---- helpers -------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "private")
        self.send_header("request-id", str(uuid.uuid4()))
        self.send_header("X-CalculatedBETarget", "exch01.corp.example.com")
        self.send_header("X-DiagInfo", "EXCH01")
        self.send_header("X-BEServer", "EXCH01")
        self.send_header("X-AspNet-Version", "4.0.30319")
        self.send_header("X-Powered-By", "ASP.NET")
        self.send_header("X-FEServer", "EXCH01")

    def _send(self, status: int, body: bytes, content_type: Optional[str], extra: Optional[List[Tuple[str, str]]] = None,
              common: bool = True) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in extra or []:
            self.send_header(k, v)
        if common:
            self._common_headers()
        else:
            self.send_header("X-Powered-By", "ASP.NET")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _auth_modes(self) -> List[str]:
        return self.state.args.auth_modes

    def _challenge_headers(self) -> List[Tuple[str, str]]:
        hdrs = []
        modes = self._auth_modes()
        if "ntlm" in modes:
            hdrs.append(("WWW-Authenticate", "Negotiate"))
            hdrs.append(("WWW-Authenticate", "NTLM"))
        if "basic" in modes:
            hdrs.append(("WWW-Authenticate", f'Basic realm="{self.state.args.realm}"'))
        return hdrs

    def _send_401(self, failure: bool, extra: Optional[List[Tuple[str, str]]] = None) -> None:
        if failure:
            self.state.bump("auth_failures")
        else:
            self.state.bump("unauthenticated")
        self.state.count_response("HTTP401")
        hdrs = extra if extra is not None else self._challenge_headers()
        self._send(401, IIS_401_PAGE, "text/html", hdrs, common=False)

    # ---- methods -------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        st = self.state
        st.bump("requests")
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        if path.lower() != st.args.path.lower():
            st.count_response("HTTP404")
            self._send(404, IIS_404_PAGE, "text/html", common=False)
            return

        auth = self._authenticate()
        if auth is None:
            return  # a 401 went out
        scheme, user, final_token = auth
        extra: List[Tuple[str, str]] = []
        if final_token:
            extra.append(("WWW-Authenticate", final_token))

        if st.args.delay_ms > 0:
            time.sleep(st.args.delay_ms / 1000.0)

        if self.command != "POST":
            st.count_response("HTTP405")
            self._send(405, b"", "text/html", extra + [("Allow", "POST")])
            return

        n = st.next_soap()
        entry: Dict[str, Any] = {
            "operation": None,
            "server_version": None,
            "auth_scheme": scheme,
            "auth_user": user,
            "message_disposition": None,
            "saved_item_folder": None,
            "subject": None,
            "body_type": None,
            "body": None,
            "importance": None,
            "to": [], "cc": [], "bcc": [], "reply_to": [],
            "from": None,
            "attachments": [],
            "element_order": [],
            "raw": body.decode("utf-8", errors="replace"),
            "response_code": None,
            "http_status": None,
            "soap_request_number": n,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "tls": bool(st.args.tls),
            "content_type": self.headers.get("Content-Type"),
            "soap_action": self.headers.get("SOAPAction"),
            "user_agent": self.headers.get("User-Agent"),
        }

        a = st.args
        if n <= a.http500_first:
            entry.update(response_code="HTTP500", http_status=500)
            st.record(entry)
            st.count_response("HTTP500")
            page = b"" if a.http500_body == "empty" else IIS_500_PAGE
            self._send(500, page, "text/html" if page else None, extra)
            return
        if n <= a.http500_first + a.busy_first:
            entry.update(response_code="ErrorServerBusy", http_status=500)
            st.record(entry)
            st.count_response("ErrorServerBusy")
            fault = soap_fault("ErrorServerBusy", MSG_SERVER_BUSY, MSG_SERVER_BUSY,
                               f'<t:Value Name="BackOffMilliseconds">{a.backoff_ms}</t:Value>')
            self._send(500, fault, "text/xml; charset=utf-8", extra)
            return

        status, resp, code = self._soap(body, entry)
        entry.update(response_code=code, http_status=status)
        st.record(entry)
        st.count_response(code)
        ctype = "text/xml; charset=utf-8"
        if status == 415:
            ctype = "text/html"
        self._send(status, resp, ctype, extra)

    # ---- authentication ------------------------------------------------------------------------
    def _authenticate(self) -> Optional[Tuple[str, Optional[str], Optional[str]]]:
        """Return (scheme, user, final WWW-Authenticate value or None), or None after sending a 401."""
        modes = self._auth_modes()
        if modes == ["none"]:
            return "none", None, None
        header = self.headers.get("Authorization")
        if not header:
            if self.conn_user is not None and self.conn_scheme == "ntlm":
                # IIS keeps an NTLM-authenticated connection authenticated for later requests.
                return "ntlm", self.conn_user, None
            self._send_401(failure=False)
            return None
        scheme, _, param = header.strip().partition(" ")
        scheme_l = scheme.lower()
        param = param.strip()
        if scheme_l == "basic" and "basic" in modes:
            try:
                raw = base64.b64decode(param, validate=True)
            except (binascii.Error, ValueError):
                self._send_401(failure=True)
                return None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            login, sep, password = text.partition(":")
            user = self.state.users.check_basic(login, password) if sep else None
            if not user:
                self._send_401(failure=True)
                return None
            self.state.bump("basic_authenticated")
            return "basic", user, None
        if scheme_l in ("ntlm", "negotiate") and "ntlm" in modes:
            return self._ntlm_step(scheme, param)
        # A scheme this endpoint does not offer: IIS ignores it and challenges again.
        self._send_401(failure=True)
        return None

    def _ntlm_step(self, scheme: str, param: str) -> Optional[Tuple[str, Optional[str], Optional[str]]]:
        import spnego
        from spnego.channel_bindings import GssChannelBindings
        from spnego.exceptions import NegotiateOptions

        st = self.state
        try:
            token = base64.b64decode(param, validate=True)
        except (binascii.Error, ValueError):
            self._fail_ntlm()
            return None
        if not token:
            self._fail_ntlm()
            return None
        is_raw_ntlm = token.startswith(b"NTLMSSP\x00")
        msg_type = int.from_bytes(token[8:12], "little") if is_raw_ntlm and len(token) >= 12 else None
        cbt = GssChannelBindings(application_data=st.channel_binding) if st.channel_binding else None

        starts_handshake = (is_raw_ntlm and msg_type == 1) or (not is_raw_ntlm and token[:1] == b"\x60")
        if starts_handshake:
            # A new handshake on this connection (IIS restarts authentication).
            self.conn_user = None
            self.conn_scheme = None
            try:
                if is_raw_ntlm:
                    ctx = spnego.server(protocol="ntlm", options=NegotiateOptions.use_ntlm)
                else:
                    ctx = spnego.server(protocol="negotiate", options=NegotiateOptions.use_negotiate)
                out = ctx.step(token)
                if is_raw_ntlm and out:
                    out = self._rewrite_challenge(ctx, out)
            except Exception as e:  # noqa: BLE001 - any acceptor error is an auth failure
                self.log_message("NTLM negotiate rejected: %s", e)
                self._fail_ntlm()
                return None
            self.ntlm_ctx = ctx
            self.ntlm_scheme = scheme
            st.bump("auth_challenges")
            st.count_response("HTTP401")
            self._send(401, IIS_401_PAGE, "text/html",
                       [("WWW-Authenticate", f"{scheme} {base64.b64encode(out or b'').decode()}")], common=False)
            return None

        # AUTHENTICATE (or a later SPNEGO leg): only valid on the connection that got the challenge.
        ctx = self.ntlm_ctx
        if ctx is None:
            self.log_message("NTLM AUTHENTICATE on a connection without a pending challenge")
            self._fail_ntlm()
            return None
        self.ntlm_ctx = None
        try:
            if is_raw_ntlm and msg_type == 3 and st.channel_binding is not None:
                self._require_channel_binding(token)
            out = ctx.step(token, channel_bindings=cbt) if cbt else ctx.step(token)
            if not ctx.complete:
                raise ValueError("context not complete after AUTHENTICATE")
            principal = ctx.client_principal
        except Exception as e:  # noqa: BLE001
            self.log_message("NTLM AUTHENTICATE rejected: %s", e)
            self._fail_ntlm()
            return None
        user = st.users.canonical(principal)
        self.conn_user = user
        self.conn_scheme = "ntlm"
        st.bump("ntlm_authenticated")
        final = f"{self.ntlm_scheme} {base64.b64encode(out).decode()}" if out else None
        return "ntlm", user, final

    def _fail_ntlm(self) -> None:
        self.ntlm_ctx = None
        self.conn_user = None
        self.conn_scheme = None
        self._send_401(failure=True)

    def _require_channel_binding(self, token: bytes) -> None:
        from spnego._ntlm_raw.messages import Authenticate, AvId, NTClientChallengeV2

        auth = Authenticate.unpack(token)
        resp = auth.nt_challenge_response or b""
        if len(resp) <= 24:
            raise ValueError("Extended Protection requires NTLMv2 with channel bindings")
        av = NTClientChallengeV2.unpack(resp[16:]).av_pairs
        cb = av.get(AvId.channel_bindings)
        if not cb or cb == b"\x00" * 16:
            raise ValueError("Extended Protection: no channel binding token in AUTHENTICATE")

    def _rewrite_challenge(self, ctx: Any, out: bytes) -> bytes:
        """Make the CHALLENGE look like a domain-joined Exchange server's (target = the NetBIOS domain,
        AV pairs with the domain and server names) instead of pyspnego's 'WORKSTATION'. The acceptor
        context is updated too, because the MIC covers the CHALLENGE as sent."""
        try:
            from spnego._ntlm_raw.messages import AvId, Challenge, NegotiateFlags, TargetInfo
        except ImportError:
            return out
        tmp = getattr(ctx, "_temp_challenge", None)
        if tmp is None:
            return out
        a = self.state.args
        dom = a.ntlm_domain
        old = Challenge.unpack(out)
        flags = (old.flags & ~NegotiateFlags.target_type_server) | NegotiateFlags.target_type_domain
        ti = TargetInfo()
        ti[AvId.nb_domain_name] = dom.upper()
        ti[AvId.nb_computer_name] = a.ntlm_server.upper()
        ti[AvId.dns_domain_name] = a.ntlm_dns_domain
        ti[AvId.dns_computer_name] = f"{a.ntlm_server.lower()}.{a.ntlm_dns_domain}"
        ti[AvId.dns_tree_name] = a.ntlm_dns_domain
        old_ti = old.target_info or {}
        if AvId.timestamp in old_ti:
            ti[AvId.timestamp] = old_ti[AvId.timestamp]
        kwargs: Dict[str, Any] = {}
        if old.version is not None:
            kwargs["version"] = old.version
        new = Challenge(flags, old.server_challenge, target_name=dom.upper(), target_info=ti, **kwargs)
        ctx._temp_challenge = new
        return new.pack()

    # ---- SOAP ------------------------------------------------------------------------------------
    def _soap(self, body: bytes, entry: Dict[str, Any]) -> Tuple[int, bytes, str]:
        self._last_raw_lines = body.decode("utf-8", errors="replace").split("\n")
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "text/xml":
            msg = (f"Cannot process the message because the content type '{self.headers.get('Content-Type') or ''}' "
                   f"was not the expected type 'text/xml; charset=utf-8'.").encode()
            return 415, msg, "HTTP415"

        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True,
                                 remove_comments=False, load_dtd=False)
        try:
            if not body.strip():
                raise etree.XMLSyntaxError("Root element is missing.", None, 1, 1)
            root = etree.fromstring(body, parser)
        except etree.XMLSyntaxError as e:
            line, col = (e.position if getattr(e, "position", None) else (1, 1))
            msg = str(e.msg if hasattr(e, "msg") and e.msg else e)
            msg = re.sub(r",? line \d+, column \d+\s*$", "", msg).strip()
            if not msg.endswith("."):
                msg += "."
            return self._schema_fault(f"{msg} Line {line}, position {col}.", line, col)

        if etree.QName(root).namespace != SOAP_NS or etree.QName(root).localname != "Envelope":
            q = etree.QName(root)
            return self._schema_fault(
                f"The element '{q.localname}' in namespace '{q.namespace or ''}' is not expected; "
                f"a SOAP 1.1 Envelope ('{SOAP_NS}') is required.", root.sourceline or 1, 1)

        header = root.find(f"{{{SOAP_NS}}}Header")
        soap_body = root.find(f"{{{SOAP_NS}}}Body")
        if soap_body is None:
            return self._schema_fault(
                f"The element 'Envelope' in namespace '{SOAP_NS}' has incomplete content. "
                f"List of possible elements expected: 'Body' in namespace '{SOAP_NS}'.", root.sourceline or 1, 1)

        version = None
        rsv = header.find(f"{{{T_NS}}}RequestServerVersion") if header is not None else None
        if rsv is not None:
            version = rsv.get("Version")
        entry["server_version"] = version
        if version not in ACCEPTED_VERSIONS:
            return 500, soap_fault("ErrorInvalidServerVersion", MSG_INVALID_VERSION, MSG_INVALID_VERSION), \
                "ErrorInvalidServerVersion"

        ops = _element_children(soap_body)
        if len(ops) != 1:
            if not ops:
                return self._schema_fault(
                    f"The element 'Body' in namespace '{SOAP_NS}' has incomplete content.", soap_body.sourceline or 1, 1)
            extra = ops[1]
            return self._schema_fault(
                f"The element 'Body' in namespace '{SOAP_NS}' has invalid child element "
                f"'{etree.QName(extra).localname}' in namespace '{etree.QName(extra).namespace}'.",
                extra.sourceline or 1, self._column(extra))
        op = ops[0]
        op_ns, op_name = _local(op)
        entry["operation"] = op_name
        if op_ns != M_NS:
            return self._schema_fault(
                f"The element 'Body' in namespace '{SOAP_NS}' has invalid child element '{op_name}' in "
                f"namespace '{op_ns}'.", op.sourceline or 1, self._column(op))

        if op_name == "CreateItem":
            type_name = "CreateItemType"
        elif op_name == "GetFolder":
            type_name = "GetFolderType"
        else:
            entry["note"] = "operation not implemented by the fake"
            return 500, soap_fault("ErrorInvalidRequest", MSG_INVALID_REQUEST, MSG_INVALID_REQUEST), "ErrorInvalidRequest"

        try:
            validate(op, type_name)
        except SchemaError as e:
            el = e.elem if e.elem is not None else op
            # Still record what could be parsed for the tests' benefit.
            try:
                if op_name == "CreateItem":
                    self._parse_create_item(op, entry)
            except Exception:  # noqa: BLE001
                pass
            return self._schema_fault(e.violation, el.sourceline or 1, self._column(el))

        if op_name == "CreateItem":
            return self._create_item(op, entry)
        return self._get_folder(op, entry)

    def _column(self, el: etree._Element) -> int:
        """Best-effort LinePosition (lxml keeps only line numbers)."""
        try:
            raw_lines = self._last_raw_lines
        except AttributeError:
            return 1
        line = (el.sourceline or 1) - 1
        if line >= len(raw_lines):
            return 1
        name = etree.QName(el).localname
        m = re.search(r"<(?:[\w.-]+:)?" + re.escape(name) + r"[\s/>]", raw_lines[line])
        return (m.start() + 2) if m else 1

    def _schema_fault(self, violation: str, line: int, col: int) -> Tuple[int, bytes, str]:
        mx = (f"<t:LineNumber>{line}</t:LineNumber><t:LinePosition>{col}</t:LinePosition>"
              f"<t:Violation>{x(violation)}</t:Violation>")
        return 500, soap_fault("ErrorSchemaValidation", f"The request failed schema validation: {violation}",
                               MSG_SCHEMA, mx), "ErrorSchemaValidation"

    # ---- CreateItem ------------------------------------------------------------------------------
    @staticmethod
    def _mailbox(mb: Optional[etree._Element]) -> Optional[Dict[str, Any]]:
        if mb is None:
            return None
        name = mb.findtext(f"{{{T_NS}}}Name")
        addr = mb.findtext(f"{{{T_NS}}}EmailAddress")
        out: Dict[str, Any] = {"name": name, "address": addr}
        rt = mb.findtext(f"{{{T_NS}}}RoutingType")
        if rt is not None:
            out["routing_type"] = rt
        return out

    def _recipients(self, msg: etree._Element, tag: str) -> List[Dict[str, Any]]:
        el = msg.find(f"{{{T_NS}}}{tag}")
        if el is None:
            return []
        return [self._mailbox(mb) for mb in el.findall(f"{{{T_NS}}}Mailbox")]

    def _parse_message(self, msg: etree._Element) -> Dict[str, Any]:
        t = lambda n: f"{{{T_NS}}}{n}"  # noqa: E731
        body_el = msg.find(t("Body"))
        frm = msg.find(t("From"))
        sender = msg.find(t("Sender"))
        atts = []
        att_root = msg.find(t("Attachments"))
        if att_root is not None:
            for a in _element_children(att_root):
                kind = etree.QName(a).localname
                content = a.findtext(t("Content"))
                compact = re.sub(r"\s+", "", content) if content is not None else None
                size = None
                if compact is not None:
                    try:
                        size = len(base64.b64decode(compact))
                    except (binascii.Error, ValueError):
                        size = None
                inline = a.findtext(t("IsInline"))
                atts.append({
                    "kind": {"FileAttachment": "file", "ItemAttachment": "item"}.get(kind, kind),
                    "name": a.findtext(t("Name")),
                    "content_type": a.findtext(t("ContentType")),
                    "content_id": a.findtext(t("ContentId")),
                    "content_location": a.findtext(t("ContentLocation")),
                    "is_inline": (inline.strip() in ("true", "1")) if inline is not None else None,
                    "content_b64": compact,
                    "size": size,
                    "element_order": [etree.QName(c).localname for c in _element_children(a)],
                })
        headers: Dict[str, Any] = {}
        ext_props = []
        for ep in msg.findall(t("ExtendedProperty")):
            uri = ep.find(t("ExtendedFieldURI"))
            if uri is None:
                continue
            value = ep.findtext(t("Value"))
            values = [v.text for v in ep.findall(f"{t('Values')}/{t('Value')}")]
            attrs = dict(uri.attrib)
            ext_props.append({"uri": attrs, "value": value, "values": values or None})
            if attrs.get("DistinguishedPropertySetId") == "InternetHeaders" and attrs.get("PropertyName"):
                headers[attrs["PropertyName"]] = value if value is not None else values
        return {
            "element_order": [etree.QName(c).localname for c in _element_children(msg)],
            "subject": msg.findtext(t("Subject")),
            "body_type": body_el.get("BodyType") if body_el is not None else None,
            "body": body_el.text if body_el is not None else None,
            "importance": msg.findtext(t("Importance")),
            "sensitivity": msg.findtext(t("Sensitivity")),
            "item_class": msg.findtext(t("ItemClass")),
            "to": self._recipients(msg, "ToRecipients"),
            "cc": self._recipients(msg, "CcRecipients"),
            "bcc": self._recipients(msg, "BccRecipients"),
            "reply_to": self._recipients(msg, "ReplyTo"),
            "from": self._mailbox(frm.find(t("Mailbox"))) if frm is not None else None,
            "sender": self._mailbox(sender.find(t("Mailbox"))) if sender is not None else None,
            "attachments": atts,
            "headers": headers,
            "extended_properties": ext_props,
            "in_reply_to": msg.findtext(t("InReplyTo")),
            "references": msg.findtext(t("References")),
            "internet_message_id": msg.findtext(t("InternetMessageId")),
            "is_read_receipt_requested": msg.findtext(t("IsReadReceiptRequested")),
            "is_delivery_receipt_requested": msg.findtext(t("IsDeliveryReceiptRequested")),
        }

    def _parse_create_item(self, op: etree._Element, entry: Dict[str, Any]) -> List[Tuple[etree._Element, Optional[Dict[str, Any]]]]:
        entry["message_disposition"] = op.get("MessageDisposition")
        sif = op.find(f"{{{M_NS}}}SavedItemFolderId")
        if sif is not None:
            d = sif.find(f"{{{T_NS}}}DistinguishedFolderId")
            f = sif.find(f"{{{T_NS}}}FolderId")
            if d is not None:
                entry["saved_item_folder"] = d.get("Id")
            elif f is not None:
                entry["saved_item_folder"] = FOLDER_BY_ID.get(f.get("Id") or "", f.get("Id"))
        items_el = op.find(f"{{{M_NS}}}Items")
        out = []
        parsed = []
        if items_el is not None:
            for it in _element_children(items_el):
                if _local(it) == (T_NS, "Message"):
                    p = self._parse_message(it)
                    parsed.append(p)
                    out.append((it, p))
                else:
                    out.append((it, None))
        if parsed:
            first = parsed[0]
            for k, v in first.items():
                entry[k] = v
        entry["items"] = parsed
        return out

    def _create_item(self, op: etree._Element, entry: Dict[str, Any]) -> Tuple[int, bytes, str]:
        a = self.state.args
        items = self._parse_create_item(op, entry)
        disposition = op.get("MessageDisposition")
        has_saved_folder = op.find(f"{{{M_NS}}}SavedItemFolderId") is not None
        messages: List[str] = []
        codes: List[str] = []
        account = (a.account_address or "").lower()
        allowed = {account} | {s.lower() for s in a.send_as}
        invalid = {s.lower() for s in a.invalid_recipient}

        for el, parsed in items:
            def err(code: str, text: str, mx: str = "") -> None:
                messages.append(response_message("CreateItem", False, code, text, "<m:Items/>", mx))
                codes.append(code)

            if parsed is None:
                err("ErrorInvalidRequest", MSG_INVALID_REQUEST)
                continue
            ro = next((READ_ONLY_ITEM_PROPS[c] for c in parsed["element_order"] if c in READ_ONLY_ITEM_PROPS), None)
            if ro:
                err("ErrorInvalidPropertySet", MSG_PROPERTY_SET, f'<t:FieldURI FieldURI="{ro}"/>')
                continue
            if disposition is None:
                err("ErrorMessageDispositionRequired", MSG_DISPOSITION_REQUIRED)
                continue
            if disposition == "SendOnly" and has_saved_folder:
                err("ErrorInvalidSendItemSaveSettings", MSG_SEND_SAVE_SETTINGS)
                continue
            if disposition in ("SendOnly", "SendAndSaveCopy"):
                if a.account_address:
                    denied = None
                    for who in (parsed["from"], parsed["sender"]):
                        addr = (who or {}).get("address")
                        if addr and addr.lower() not in allowed:
                            denied = addr
                            break
                    if denied:
                        err("ErrorSendAsDenied", MSG_SEND_AS_DENIED)
                        continue
                rcpts = parsed["to"] + parsed["cc"] + parsed["bcc"]
                if not rcpts:
                    err("ErrorInvalidRecipients", MSG_NO_RECIPIENTS)
                    continue
                bad = None
                for r in rcpts:
                    addr = (r.get("address") or "").strip()
                    if (not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@")
                            or addr.lower() in invalid):
                        bad = addr or (r.get("name") or "")
                        break
                if bad is not None:
                    err("ErrorInvalidRecipients", MSG_UNRESOLVED.format(bad))
                    continue
            if disposition == "SaveOnly":
                iid = base64.b64encode(b"\x00\x03\x24\x00" + uuid.uuid4().bytes * 3 + b"\x00\x00").decode()
                ck = base64.b64encode(b"\x09\x00\x00\x00\x16\x00\x00\x00" + uuid.uuid4().bytes + b"\x00\x00\x00\x00").decode()
                inner = f'<m:Items><t:Message><t:ItemId Id="{iid}" ChangeKey="{ck}"/></t:Message></m:Items>'
            else:
                inner = "<m:Items/>"
            messages.append(response_message("CreateItem", True, inner=inner))
            codes.append("NoError")

        code = next((c for c in codes if c != "NoError"), "NoError")
        entry["response_codes"] = codes
        return 200, envelope_ok(self.state.info, response_wrapper("CreateItem", messages)), code

    # ---- GetFolder -------------------------------------------------------------------------------
    def _get_folder(self, op: etree._Element, entry: Dict[str, Any]) -> Tuple[int, bytes, str]:
        a = self.state.args
        shape = op.findtext(f"{{{M_NS}}}FolderShape/{{{T_NS}}}BaseShape") or "Default"
        props = set(FOLDER_SHAPES.get(shape, FOLDER_SHAPES["Default"]))
        for f in op.findall(f"{{{M_NS}}}FolderShape/{{{T_NS}}}AdditionalProperties/{{{T_NS}}}FieldURI"):
            uri = f.get("FieldURI") or ""
            if uri.startswith("folder:"):
                props.add(uri[len("folder:"):])
        ids = _element_children(op.find(f"{{{M_NS}}}FolderIds"))
        messages, codes, asked = [], [], []
        account = (a.account_address or "").lower()
        for fid in ids:
            ns, kind = _local(fid)
            if kind == "DistinguishedFolderId":
                name = fid.get("Id")
                mbx = fid.findtext(f"{{{T_NS}}}Mailbox/{{{T_NS}}}EmailAddress")
                if mbx and account and mbx.lower() != account:
                    messages.append(response_message("GetFolder", False, "ErrorNonExistentMailbox",
                                                     "The SMTP address has no mailbox associated with it.",
                                                     message_xml=f"<t:Value Name=\"SmtpAddress\">{x(mbx)}</t:Value>"))
                    codes.append("ErrorNonExistentMailbox")
                    asked.append(name)
                    continue
            else:
                name = FOLDER_BY_ID.get(fid.get("Id") or "")
                if name is None:
                    raw = fid.get("Id") or ""
                    code, text = ("ErrorInvalidIdMalformed", MSG_ID_MALFORMED)
                    try:
                        if base64.b64decode(raw, validate=True)[:4] == b"\x00\x03\x24\x00":
                            code, text = ("ErrorItemNotFound", MSG_FOLDER_NOT_FOUND)
                    except (binascii.Error, ValueError):
                        pass
                    messages.append(response_message("GetFolder", False, code, text))
                    codes.append(code)
                    asked.append(raw)
                    continue
            asked.append(name)
            if name not in FOLDERS:
                messages.append(response_message("GetFolder", False, "ErrorFolderNotFound", MSG_FOLDER_NOT_FOUND))
                codes.append("ErrorFolderNotFound")
                continue
            inner = f"<m:Folders><t:Folder>{folder_xml(name, props)}</t:Folder></m:Folders>"
            messages.append(response_message("GetFolder", True, inner=inner))
            codes.append("NoError")
        entry["folders"] = asked
        entry["folder_shape"] = shape
        entry["response_codes"] = codes
        code = next((c for c in codes if c != "NoError"), "NoError")
        return 200, envelope_ok(self.state.info, response_wrapper("GetFolder", messages)), code


class EwsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: Tuple[str, int], handler: type, ssl_ctx: Optional[ssl.SSLContext]):
        self.ssl_ctx = ssl_ctx
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.address_family = family
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the connection's own thread, so a slow client cannot stall accept().
        if self.ssl_ctx is not None:
            try:
                request.settimeout(30)
                request = self.ssl_ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write(f"ews_server: TLS handshake failed from {client_address}: {e}\n")
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, ssl.SSLError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Fake Exchange EWS endpoint for tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", action="store_true", help="serve HTTPS (needs --cert and --key)")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--path", default="/EWS/Exchange.asmx", help="endpoint path (case-insensitive, like IIS)")
    ap.add_argument("--auth", default="none",
                    help="none | basic | ntlm, or a comma list such as ntlm,basic (both offered)")
    ap.add_argument("--users", help="accounts file, lines DOMAIN:user:password (pyspnego NTLM_USER_FILE format)")
    ap.add_argument("--realm", default="mail.corp.example.com", help="Basic realm")
    ap.add_argument("--ntlm-domain", default=None, help="NetBIOS domain in the NTLM CHALLENGE (default: first users-file domain)")
    ap.add_argument("--ntlm-dns-domain", default=None, help="DNS domain in the CHALLENGE (default: <domain>.example.com)")
    ap.add_argument("--ntlm-server", default="EXCH01", help="server NetBIOS name in the CHALLENGE")
    ap.add_argument("--extended-protection", choices=("off", "required"), default="off",
                    help="required: NTLM over HTTPS must carry a matching tls-server-end-point channel binding")
    ap.add_argument("--account-address", default=None, help="primary SMTP address of the authenticated mailbox")
    ap.add_argument("--send-as", action="append", default=[], help="address the account may send as (repeatable)")
    ap.add_argument("--invalid-recipient", action="append", default=[],
                    help="recipient address answered with ErrorInvalidRecipients (repeatable)")
    ap.add_argument("--busy-first", type=int, default=0, help="first N authenticated requests get ErrorServerBusy")
    ap.add_argument("--backoff-ms", type=int, default=2000, help="BackOffMilliseconds in the ErrorServerBusy fault")
    ap.add_argument("--http500-first", type=int, default=0,
                    help="first N authenticated requests get HTTP 500 with an IIS error page (before --busy-first)")
    ap.add_argument("--http500-body", choices=("html", "empty"), default="html")
    ap.add_argument("--delay-ms", type=int, default=0, help="sleep before answering each authenticated request")
    ap.add_argument("--spool", default=None, help="directory for <n>.json request records and stats.json")
    ap.add_argument("--server-build", default="15.1.2507.6",
                    help="ServerVersionInfo build Major.Minor.Build.MinorBuild (default Exchange 2016 CU)")
    ap.add_argument("--server-version-string", default="V2017_07_11",
                    help="ServerVersionInfo/@Version (Exchange 2016/2019 report V2017_07_11)")
    ap.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = ap.parse_args(argv)

    modes = [m.strip().lower() for m in args.auth.split(",") if m.strip()]
    for m in modes:
        if m not in ("none", "basic", "ntlm"):
            ap.error(f"unknown --auth mode {m!r}")
    if "none" in modes and len(modes) > 1:
        ap.error("--auth none cannot be combined")
    args.auth_modes = modes or ["none"]
    if args.tls and not (args.cert and args.key):
        ap.error("--tls needs --cert and --key")
    try:
        parts = [int(p) for p in args.server_build.split(".")]
        assert len(parts) == 4
        args.server_build = tuple(parts)
    except (ValueError, AssertionError):
        ap.error("--server-build must look like 15.1.2507.6")
    if args.users is None and os.environ.get("NTLM_USER_FILE"):
        args.users = os.environ["NTLM_USER_FILE"]
    if args.auth_modes != ["none"] and not args.users:
        ap.error("--auth basic/ntlm needs --users (or NTLM_USER_FILE)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    users = Users(args.users)
    tmpdir = None
    if "ntlm" in args.auth_modes:
        if not args.ntlm_domain:
            args.ntlm_domain = next((d for d, _u, _p in users.entries if d), "CORP")
        if not args.ntlm_dns_domain:
            args.ntlm_dns_domain = f"{args.ntlm_domain.lower()}.example.com"
        tmpdir = tempfile.mkdtemp(prefix="ews-ntlm-")
        ntlm_file = os.path.join(tmpdir, "ntlm_users")
        users.write_ntlm_file(ntlm_file)
        os.environ["NTLM_USER_FILE"] = ntlm_file

    state = State(args, users)
    EwsHandler.state = state

    ssl_ctx = None
    if args.tls:
        ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_ctx.load_cert_chain(args.cert, args.key)
        ssl_ctx.set_alpn_protocols(["http/1.1"])  # IIS falls back to HTTP/1.1 for Windows auth

    server = EwsServer((args.host, args.port), EwsHandler, ssl_ctx)
    port = server.server_address[1]

    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    while not stop.is_set():
        stop.wait(0.1)
    server.shutdown()
    server.server_close()
    if tmpdir:
        try:
            for f in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, f))
            os.rmdir(tmpdir)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
