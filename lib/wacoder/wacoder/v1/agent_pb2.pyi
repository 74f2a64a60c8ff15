from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Media(_message.Message):
    __slots__ = ("url", "content_type")
    URL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    url: str
    content_type: str
    def __init__(self, url: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class InboundMessage(_message.Message):
    __slots__ = ("message_sid", "sender", "recipient", "body", "profile_name", "wa_id", "media", "received_at_ms")
    MESSAGE_SID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_NAME_FIELD_NUMBER: _ClassVar[int]
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    message_sid: str
    sender: str
    recipient: str
    body: str
    profile_name: str
    wa_id: str
    media: _containers.RepeatedCompositeFieldContainer[Media]
    received_at_ms: int
    def __init__(self, message_sid: _Optional[str] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., body: _Optional[str] = ..., profile_name: _Optional[str] = ..., wa_id: _Optional[str] = ..., media: _Optional[_Iterable[_Union[Media, _Mapping]]] = ..., received_at_ms: _Optional[int] = ...) -> None: ...

class SubmitMessageRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: InboundMessage
    def __init__(self, message: _Optional[_Union[InboundMessage, _Mapping]] = ...) -> None: ...

class SubmitMessageResponse(_message.Message):
    __slots__ = ("duplicate", "entry_id")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    entry_id: str
    def __init__(self, duplicate: bool = ..., entry_id: _Optional[str] = ...) -> None: ...
