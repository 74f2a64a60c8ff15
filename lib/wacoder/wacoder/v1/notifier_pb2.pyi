from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SendRequest(_message.Message):
    __slots__ = ("to", "body", "idempotency_key", "media_urls", "accepted_at_ms")
    TO_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MEDIA_URLS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    to: str
    body: str
    idempotency_key: str
    media_urls: _containers.RepeatedScalarFieldContainer[str]
    accepted_at_ms: int
    def __init__(self, to: _Optional[str] = ..., body: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., media_urls: _Optional[_Iterable[str]] = ..., accepted_at_ms: _Optional[int] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("duplicate", "outbox_ids")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    outbox_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, duplicate: bool = ..., outbox_ids: _Optional[_Iterable[str]] = ...) -> None: ...
