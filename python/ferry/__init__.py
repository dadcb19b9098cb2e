"""ferry: move tensors and buffers between processes with one-sided RDMA.

The API of ``dynamo.connect``, over libferry (Ferry's C data plane) and its
coordinator client. The receiver makes its memory writable and hands out the
operation's metadata; the sender writes into it::

    import ferry, torch

    connector = ferry.Connector()

    async def recv_data(local_tensor: torch.Tensor) -> None:
        descriptor = ferry.Descriptor(local_tensor)
        with connector.create_writable(descriptor) as write_op:
            op_metadata = write_op.metadata()
            await request_remote_data(op_metadata)    # any side channel
            await write_op.wait_for_completion()

    def send_data(tensor: torch.Tensor, remote_metadata: ferry.RdmaMetadata) -> None:
        with connector.begin_write(ferry.Descriptor(tensor), remote_metadata) as op:
            op.wait()

Or through ferry-coordinator, by a request ID both sides know::

    coordinator = ferry.Coordinator("127.0.0.1:7400")
    token = write_op.publish(coordinator, "req-42")            # receiver
    connector.begin_write_by_id(coordinator, "req-42", token, descriptor)  # sender

Memory is never copied: a Descriptor names the caller's memory (a tensor,
an array, a buffer) and keeps its owner alive for as long as an operation
uses it. Non-contiguous tensors and arrays are refused, never copied.

Memory registered once serves any number of operations with no per-operation
registration (no ucp_mem_map): ``Connector.allocate(size)`` gives host memory
UCX can write directly, ``Connector.register_memory(buffer)`` registers the
caller's; both return a Region, a writable buffer (memoryview, numpy,
``torch.frombuffer``) that operations take like any buffer::

    with connector.allocate(64 << 20) as pool:
        kv = torch.frombuffer(memoryview(pool), dtype=torch.uint8)   # no copy
        with connector.create_writable(pool.descriptor(0, 4096)) as w:
            ...
        del kv                                        # before the pool closes

A region's remote key covers the whole region until it is closed (see
Region, and README's "Memory registered once").

Errors are FerryError subclasses carrying libferry's status code and
message. Every blocking call releases the GIL; ``await
op.wait_for_completion()`` costs no thread (libferry's completion callback
signals an eventfd the event loop watches).
"""
from __future__ import annotations

import asyncio
import base64
import enum
import functools
import json
import math
import operator
import sys
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _ferry

__all__ = [
    "Connector", "Coordinator", "TlsConfig", "Descriptor", "Device", "DeviceKind",
    "OperationStatus", "OperationKind", "RdmaMetadata", "WritableOperation",
    "ReadableOperation", "WriteOperation", "ReadOperation", "FerryError",
    "InvalidArgument", "SizeMismatch", "KindMismatch", "NotFound", "AlreadyExists",
    "PermissionDenied", "Unauthenticated", "FailedPrecondition", "TimedOut", "Unavailable",
    "Cancelled", "Expired", "Aborted", "ResourceExhausted", "NoMemory", "Unimplemented",
    "ProtocolError", "TransportError", "PeerFailed", "SystemCallError", "Misuse",
    "InternalError", "LeaseNotFound", "OutOfRange", "Busy", "parse_size", "Region",
]

# ---- errors -------------------------------------------------------------


class FerryError(Exception):
    """Base of every error libferry reports.

    ``code`` is libferry's ``ferry_status_t`` (negative), ``status_name`` its
    name (``"FERRY_ERR_NOT_FOUND"``) and ``message`` libferry's detailed
    message for this failure."""

    code: int = -20

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        self.code = type(self).code if code is None else int(code)
        self.status_name = _ferry.status_name(self.code)
        self.message = message
        super().__init__(f"{message} ({self.status_name})")


class InvalidArgument(FerryError):
    """FERRY_ERR_INVALID_ARGUMENT: a bad value (descriptor, size, metadata)."""
    code = -1


class SizeMismatch(InvalidArgument):
    """FERRY_ERR_SIZE_MISMATCH: the local and remote descriptor lists differ
    in count or in a size; the message names both sizes. An InvalidArgument
    too (the gRPC code both map to)."""
    code = -24


class KindMismatch(InvalidArgument):
    """FERRY_ERR_KIND_MISMATCH: a write paired with a readable's metadata, or
    a read with a writable's. An InvalidArgument too."""
    code = -25


class NotFound(FerryError):
    """FERRY_ERR_NOT_FOUND: no such request ID (or operation) any more."""
    code = -2


class AlreadyExists(FerryError):
    """FERRY_ERR_ALREADY_EXISTS: the request ID is taken."""
    code = -3


class PermissionDenied(FerryError):
    """FERRY_ERR_PERMISSION_DENIED: a wrong access token."""
    code = -4


class Unauthenticated(FerryError):
    """FERRY_ERR_UNAUTHENTICATED."""
    code = -5


class FailedPrecondition(FerryError):
    """FERRY_ERR_FAILED_PRECONDITION: the operation is taken or no longer
    open."""
    code = -6


class TimedOut(FerryError):
    """FERRY_ERR_TIMED_OUT: a wait ran out of time (the operation goes on)."""
    code = -7


class Unavailable(FerryError):
    """FERRY_ERR_UNAVAILABLE: the coordinator (or etcd) cannot be reached."""
    code = -8


class Cancelled(FerryError):
    """FERRY_ERR_CANCELLED: the operation was cancelled (by this side, or by
    the peer through the coordinator)."""
    code = -9


class Expired(FerryError):
    """FERRY_ERR_EXPIRED: a lease expired (its holder stopped keeping it)."""
    code = -10


class Aborted(FerryError):
    """FERRY_ERR_ABORTED: a conflict with a concurrent change."""
    code = -11


class ResourceExhausted(FerryError):
    """FERRY_ERR_RESOURCE_EXHAUSTED."""
    code = -12


class NoMemory(FerryError):
    """FERRY_ERR_NO_MEMORY."""
    code = -13


class Unimplemented(FerryError):
    """FERRY_ERR_UNIMPLEMENTED: e.g. CUDA memory where the connector has no
    CUDA (is_cuda_available is false), or a CUDA region without the direct
    path."""
    code = -14


class ProtocolError(FerryError):
    """FERRY_ERR_PROTOCOL: a malformed message from a peer."""
    code = -15


class TransportError(FerryError):
    """FERRY_ERR_TRANSPORT: UCX failed."""
    code = -16


class PeerFailed(FerryError):
    """FERRY_ERR_PEER_FAILED: the remote side reported an error."""
    code = -17


class SystemCallError(FerryError):
    """FERRY_ERR_IO: a system call failed."""
    code = -18


class Misuse(FerryError):
    """FERRY_ERR_MISUSE: the API's rules were broken (e.g. metadata() of an
    active operation, a closed operation)."""
    code = -19


class InternalError(FerryError):
    """FERRY_ERR_INTERNAL."""
    code = -20


class LeaseNotFound(NotFound):
    """FERRY_ERR_LEASE_NOT_FOUND: the lease expired or never existed."""
    code = -21


class OutOfRange(FerryError):
    """FERRY_ERR_OUT_OF_RANGE."""
    code = -22


class Busy(FerryError):
    """FERRY_ERR_BUSY: a handle still has live children (close them first),
    or an operation is in use by another thread."""
    code = -23


_ERRORS: Dict[int, type] = {
    cls.code: cls for cls in (
        InvalidArgument, NotFound, AlreadyExists, PermissionDenied, Unauthenticated,
        FailedPrecondition, TimedOut, Unavailable, Cancelled, Expired, Aborted,
        ResourceExhausted, NoMemory, Unimplemented, ProtocolError, TransportError, PeerFailed,
        SystemCallError, Misuse, InternalError, LeaseNotFound, OutOfRange, Busy, SizeMismatch,
        KindMismatch)
}


def _make_error(code: int, message: str) -> FerryError:
    """The exception for a libferry status and message (called from C): the
    class is chosen by the code alone, never by the message."""
    return _ERRORS.get(code, FerryError)(message, code)


_ferry._set_error_factory(_make_error)


def parse_size(text: str) -> int:
    """Parses "4096", "4KiB", "64MiB", "1GiB", "1MB" ... (libferry's parser)."""
    return _ferry.parse_size(text)


# ---- devices --------------------------------------------------------------


class DeviceKind(enum.IntEnum):
    """Where memory lives (ferry_device_kind_t)."""
    HOST = _ferry.DEVICE_HOST
    CUDA = _ferry.DEVICE_CUDA


class Device:
    """A device: ``Device("cpu")`` (or ``"host"``), ``Device("cuda")`` (= cuda:0),
    ``Device("cuda:N")``; also from a ``torch.device`` or another Device.
    ``kind`` is a DeviceKind, ``id`` the CUDA ordinal (0 for the host)."""

    __slots__ = ("kind", "id")

    def __init__(self, spec: Union[str, "Device", Any] = "cpu") -> None:
        if isinstance(spec, Device):
            kind, ident = spec.kind, spec.id
        elif isinstance(spec, str):
            kind, ident = _ferry.device_parse(spec)
        elif hasattr(spec, "type") and hasattr(spec, "index"):  # torch.device
            text = spec.type if spec.index is None else f"{spec.type}:{spec.index}"
            kind, ident = _ferry.device_parse(text)
        else:
            raise TypeError(f"Device: expected 'cpu', 'cuda:N' or a Device, got {spec!r}")
        self.kind = DeviceKind(kind)
        self.id = int(ident)

    def __str__(self) -> str:
        return "cpu" if self.kind == DeviceKind.HOST else f"cuda:{self.id}"

    def __repr__(self) -> str:
        return f"Device({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = Device(other)
        return isinstance(other, Device) and (self.kind, self.id) == (other.kind, other.id)

    def __hash__(self) -> int:
        return hash((self.kind, self.id))


_HOST = Device("cpu")

# ---- descriptors ----------------------------------------------------------


def _not_contiguous(what: str) -> InvalidArgument:
    return InvalidArgument(
        f"descriptor: the {what} is not contiguous; Ferry refuses it rather than copy it (a "
        "copy would not receive remote writes); make it contiguous yourself "
        "(.contiguous(), numpy.ascontiguousarray) and hand that object over")


def _torch_tensor_type() -> Optional[type]:
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def _tensor_storage(tensor: Any) -> Any:
    """The storage that owns a tensor's memory (untyped_storage() since torch
    2.0, storage() before)."""
    untyped = getattr(tensor, "untyped_storage", None)
    return untyped() if untyped is not None else tensor.storage()


class Descriptor(_ferry._Descriptor):
    """One contiguous region of memory: ``ptr``, ``size`` (bytes), ``device``.

    Built from:
      * a torch tensor (``cpu``; ``cuda:N`` tensors give CUDA descriptors,
        refused (Unimplemented) by a connector whose ``is_cuda_available``
        is false, moved on the staged path otherwise, or on the direct path
        where it is turned on: README, "GPU"; an operation on one first
        waits for the work queued on its device's current stream),
      * a numpy array or any object with the buffer protocol (``bytearray``,
        ``memoryview``, ``bytes``; read-only ones only as a source),
      * a Region (Connector.allocate, register_memory): the whole region;
        ``region.descriptor(offset, size)`` for part of it,
      * a tuple ``(ptr, size, device)`` naming memory the caller keeps alive.

    The object is kept alive by the descriptor (``owner``), and the
    descriptor by every operation using it. A buffer stays exported for as
    long as the descriptor lives (a bytearray cannot resize, a memoryview
    cannot be released), through an export the descriptor keeps to itself
    (but ctypes.resize() moves a ctypes buffer all the same: do not resize
    one). A buffer of Python objects (format 'O') is refused. A tensor's
    storage is held as well, so ``t.set_(...)`` does not free the memory;
    but torch cannot forbid changing that storage in place
    (``t.resize_()`` past its capacity, ``untyped_storage().resize_()``):
    do not resize a tensor an operation uses. torch has no read-only
    tensors, so a tensor is always taken as writable: do not hand one over
    read-only memory (``torch.frombuffer(bytes)``) to create_writable or
    begin_read. Non-contiguous tensors and arrays are refused with
    InvalidArgument, never copied. A null pointer or zero size is refused
    (libferry's own check)."""

    def __new__(cls, data: Any, device: Union[str, Device, None] = None) -> "Descriptor":
        tensor_type = _torch_tensor_type()
        if isinstance(data, _ferry._Region):
            if device is not None and Device(device) != data.device:
                raise InvalidArgument(f"descriptor: the region is on {data.device}, not {device}")
            return data.descriptor()
        if isinstance(data, tuple):
            if len(data) != 3 or device is not None:
                raise TypeError("Descriptor((ptr, size, device)): a 3-tuple, and no device=")
            ptr, size, dev = data
            dev = Device(dev)
            self = super().__new__(cls, int(ptr), int(size), int(dev.kind), dev.id, None, False)
        elif tensor_type is not None and isinstance(data, tensor_type):
            if not data.is_contiguous():
                raise _not_contiguous("tensor")
            # A conjugate or negative view is contiguous, but its bytes are
            # not its values (torch applies the bit as it reads): sent or
            # received raw they would be silently wrong.
            if any(getattr(data, bit, lambda: False)() for bit in ("is_conj", "is_neg")):
                raise InvalidArgument(
                    "descriptor: the tensor is a lazy conjugate or negative view, whose bytes "
                    "are not its values; resolve_conj() / resolve_neg() it first")
            dev = Device(data.device)
            if device is not None and Device(device) != dev:
                raise InvalidArgument(f"descriptor: the tensor is on {dev}, not {device}")
            size = data.numel() * data.element_size()
            # torch has no read-only tensors: a tensor is always taken as
            # writable (see the class docstring).
            self = super().__new__(cls, data.data_ptr(), size, int(dev.kind), dev.id, data,
                                   False)
            # The storage too: a tensor can be pointed at other memory
            # (t.set_(...)), which would free this storage under a transfer.
            self._storage = _tensor_storage(data)
        else:
            try:
                view = memoryview(data)
            except TypeError:
                raise TypeError(
                    "Descriptor: expected a tensor, an array, a buffer or (ptr, size, device), "
                    f"got {type(data).__name__}") from None
            with view:  # only to check: the descriptor takes its own export
                if not view.c_contiguous:
                    raise _not_contiguous(type(data).__name__)
                # Said here: libferry would see an empty buffer's pointer,
                # which may be NULL, and call it a null pointer.
                if view.nbytes == 0:
                    raise InvalidArgument(
                        f"descriptor: the {type(data).__name__} is empty (size 0)")
            if device is not None and Device(device) != _HOST:
                raise InvalidArgument(
                    f"descriptor: a {type(data).__name__} is host memory, not {device}")
            # The export that holds the memory is kept inside the descriptor,
            # where no caller can release it; owner is data itself.
            self = cls._from_buffer(data)
        self._validate()
        return self

    @property
    def device(self) -> Device:
        """The Device the region is on."""
        return Device("cpu") if self._device_kind == DeviceKind.HOST else Device(
            f"cuda:{self._device_id}")

    def __repr__(self) -> str:
        return f"Descriptor(ptr={self.ptr:#x}, size={self.size}, device={str(self.device)!r})"


def _descs(descs: Any, wait: bool = True) -> Any:
    """A Descriptor, or a list of them; plain objects become Descriptors.
    Their CUDA tensors' pending work is waited for first (_cuda_work_done),
    unless wait is false (the caller waits for _cuda_streams itself)."""
    if isinstance(descs, _ferry._Descriptor):
        out = descs
    elif isinstance(descs, (list, tuple)):
        if all(isinstance(d, _ferry._Descriptor) for d in descs):
            out = descs
        else:
            out = [d if isinstance(d, _ferry._Descriptor) else Descriptor(d) for d in descs]
    else:
        out = Descriptor(descs)
    if wait:
        _cuda_work_done(out)
    return out


def _cuda_streams(descs: Any) -> List[Any]:
    """The current stream of each CUDA tensor's device among descs, once
    per device (this thread's: the streams its work was queued on)."""
    tensor_type = _torch_tensor_type()
    if tensor_type is None:
        return []
    devices: Dict[Any, Any] = {}
    for d in descs if isinstance(descs, (list, tuple)) else (descs,):
        t = d.owner
        if isinstance(t, tensor_type) and t.is_cuda and t.device not in devices:
            devices[t.device] = sys.modules["torch"].cuda.current_stream(t.device)
    return list(devices.values())


def _cuda_work_done(descs: Any) -> None:
    """Waits for the work queued on the current stream of each CUDA tensor's
    device (torch.cuda.current_stream(device).synchronize(), the stream this
    thread launches on), before an operation is made on the tensors: a
    tensor a kernel is still producing is read once that kernel is done, and
    a destination a kernel still uses is written after it. Neither a UCX
    transport (the direct path) nor the staged path's copies are ordered
    after torch's streams otherwise. Work on other streams is the caller's
    to finish first (README, "GPU")."""
    for stream in _cuda_streams(descs):
        stream.synchronize()


# ---- regions --------------------------------------------------------------


class Region(_ferry._Region):
    """Memory registered with UCX once, for any number of operations: made
    by ``Connector.allocate(size)`` (host memory Ferry allocates, zeroed,
    freed at close) or ``Connector.register_memory(buffer)`` (the caller's
    memory, kept alive and exported until close).

    Operations on descriptors inside it (``Descriptor(region)``,
    ``region.descriptor(offset, size)``, or any buffer over its memory)
    register nothing of their own: they reuse the region's memory handle and
    remote key. That key covers the whole region until it is closed, not
    only one operation's bytes: put in one region only memory that every
    holder of any of its operations' metadata may reach.

    A host region is a writable buffer: ``memoryview(region)``,
    ``numpy.frombuffer(region, ...)``, ``torch.frombuffer(memoryview(region),
    ...)`` share its memory without a copy, and close() refuses while they
    live. Give torch a memoryview (or ``torch.from_numpy`` an array): a
    bare ``torch.frombuffer(region)`` drops its export at once and keeps
    only a reference, which keeps the region from being collected but not
    from an explicit close().

    ``close()`` (or leaving its ``with`` block) deregisters it, and frees
    allocated memory: BufferError while a buffer export lives (release the
    memoryview, array or tensor first), Busy while an operation uses it (a
    passive one until it is final or closed, an active one until its data
    stopped moving). Dropping the last reference releases it too; a region
    still in use then is released by its connector once free. The region
    keeps its connector alive, and the connector refuses to close before
    its regions."""

    @property
    def device(self) -> Device:
        """The Device the memory is on."""
        return Device("cpu") if self._device_kind == DeviceKind.HOST else Device(
            f"cuda:{self._device_id}")

    def descriptor(self, offset: int = 0, size: Optional[int] = None) -> Descriptor:
        """A Descriptor of ``size`` bytes at ``offset`` (default: the rest of
        the region). It keeps the region alive; an operation on it after
        the region is closed is refused (Misuse), and so is one of another
        connector, or a register_memory (InvalidArgument: give those
        ``memoryview(region)``, which keeps the region open)."""
        offset = int(offset)
        size = self.size - offset if size is None else int(size)
        if offset < 0 or offset > self.size:
            raise ValueError(f"Region.descriptor: offset {offset} is outside the region's "
                             f"{self.size} bytes")
        if size <= 0 or size > self.size - offset:
            raise ValueError(f"Region.descriptor: size {size} at offset {offset} does not fit "
                             f"in the region's {self.size} bytes")
        d = _ferry._Descriptor.__new__(Descriptor, self.ptr + offset, size,
                                       int(self._device_kind), self._device_id, self, False)
        d._validate()
        return d

    def __len__(self) -> int:
        return self.size

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        except (Busy, BufferError):
            if exc_type is None:
                raise
            # An exception is on its way out of the block: do not hide it.
            # The region is released when collected (by its connector, once
            # no operation uses it).

    def __repr__(self) -> str:
        what = "allocated" if self.allocated else "registered"
        if self.closed:
            return f"<Region {what}, closed>"
        return f"<Region {what} {self.size} bytes at {self.ptr:#x} on {self.device}>"


# ---- status and metadata --------------------------------------------------


class OperationStatus(enum.IntEnum):
    """An operation's state, as dynamo.connect's (ferry_op_status_t values).
    COMPLETE, CANCELLED and ERRORED are final."""
    UNINITIALIZED = 0
    INITIALIZED = 1
    IN_PROGRESS = 2
    COMPLETE = 3
    CANCELLED = 4
    ERRORED = 5

    @property
    def is_final(self) -> bool:
        """True for COMPLETE, CANCELLED, ERRORED."""
        return self >= OperationStatus.COMPLETE


class OperationKind(enum.IntEnum):
    """What metadata is for: READ (a readable's) or WRITE (a writable's), as
    dynamo.connect's."""
    READ = 1
    WRITE = 2


_JSON_FORMAT = "ferry.v1.RdmaMetadata"


class RdmaMetadata:
    """What a passive operation hands out: the serialized ferry.v1.RdmaMetadata
    (bytes). It is a capability (whoever holds it can reach that memory):
    send it only to the intended peer. ``bytes(md)`` gives the bytes;
    ``to_json()`` / ``from_json()`` a JSON form for HTTP side channels."""

    __slots__ = ("_data",)

    def __init__(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RdmaMetadata) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"<RdmaMetadata {len(self._data)} bytes>"

    def to_dict(self) -> Dict[str, str]:
        """``{"format": "ferry.v1.RdmaMetadata", "base64": "..."}``."""
        return {"format": _JSON_FORMAT, "base64": base64.b64encode(self._data).decode("ascii")}

    def to_json(self) -> str:
        """The JSON form: ``{"format": "ferry.v1.RdmaMetadata", "base64": "..."}``."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Union[str, bytes, Dict[str, Any]]) -> "RdmaMetadata":
        """Parses the JSON form (a str, bytes or an already decoded dict)."""
        try:
            obj = json.loads(text) if isinstance(text, (str, bytes, bytearray)) else text
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise InvalidArgument(f"metadata JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("format") != _JSON_FORMAT or not isinstance(
                obj.get("base64"), str):
            raise InvalidArgument(
                f"metadata JSON: expected {{\"format\": \"{_JSON_FORMAT}\", \"base64\": ...}}")
        try:
            return cls(base64.b64decode(obj["base64"], validate=True))
        except ValueError as e:
            raise InvalidArgument(f"metadata JSON: base64: {e}") from None


def _metadata_bytes(md: Any) -> bytes:
    if isinstance(md, RdmaMetadata):
        return md._data
    if isinstance(md, (bytes, bytearray, memoryview)):
        return bytes(md)
    if isinstance(md, (str, dict)):
        return RdmaMetadata.from_json(md)._data
    raise TypeError(f"remote_metadata: expected RdmaMetadata, bytes or its JSON, got "
                    f"{type(md).__name__}")


# ---- operations -----------------------------------------------------------


def _timeout_ms(timeout: Optional[float], name: str = "timeout") -> int:
    """Seconds (None or infinity: no limit) as the milliseconds libferry
    takes; errors name the argument, `name`."""
    if timeout is None or timeout == math.inf:
        return -1
    try:
        at_least_zero = timeout >= 0  # false for NaN
    except TypeError:
        raise TypeError(f"{name} must be a number of seconds or None, got "
                        f"{type(timeout).__name__}") from None
    if not at_least_zero:
        raise ValueError(f"{name} must be >= 0 seconds or None")
    if timeout >= (2**31 - 1) / 1000:
        return 2**31 - 1
    return int(math.ceil(timeout * 1000))


def _whole(value: Any) -> int:
    """An int argument: an int, or a float with no fraction (30.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return operator.index(value)


def _wait_ms(wait: Optional[float]) -> int:
    """A by-ID call's wait for the record: 0 (None) looks once; infinity is
    the longest a wait_ms holds."""
    if wait is None:
        return 0
    ms = _timeout_ms(wait, "wait")
    return 2**31 - 1 if ms < 0 else max(1, ms)


def _text(value: Any, field: str) -> Any:
    """A text argument bound for a C string: one with a NUL in it would
    be cut there, so it is refused naming the field (the C layer's own
    ValueError names none). Other types are left to the C layer's
    TypeError."""
    if isinstance(value, str) and "\0" in value:
        raise InvalidArgument(f"{field}: contains a NUL character (at {value.index(chr(0))})")
    return value


def _ttl_s(ttl: Optional[int]) -> int:
    """A lease TTL argument in seconds; 0: the coordinator's default."""
    if ttl is None:
        return 0
    s = _whole(ttl)
    if not 0 <= s <= 2**31 - 1:
        raise InvalidArgument(f"ttl {s} is not from 0 (the default) to {2**31 - 1} seconds")
    return s


def _expire(fut: "asyncio.Future[None]", timeout: float, op: "_Operation") -> None:
    if fut.done():
        return
    if op.closed or op._status >= OperationStatus.COMPLETE:
        fut.set_result(None)  # it ended within this loop iteration: its outcome, not TimedOut
    else:
        fut.set_exception(TimedOut(f"operation: not final after {timeout} s (it goes on)"))


def _wake(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Operation(_ferry._Operation):
    """What every operation offers: status, wait, cancel, close, ``with``."""

    def __init__(self) -> None:
        self._waiters: Optional[List["asyncio.Future[None]"]] = None

    @property
    def status(self) -> OperationStatus:
        """The current OperationStatus (the final one once closed)."""
        return OperationStatus(self._status)

    def wait(self, timeout: Optional[float] = None) -> None:
        """Blocks (GIL released) until the operation is final. Returns on
        COMPLETE; raises Cancelled, the error of an ERRORED operation, or
        TimedOut after ``timeout`` seconds (the operation goes on)."""
        self._wait(_timeout_ms(timeout))

    async def wait_for_completion(self, timeout: Optional[float] = None) -> None:
        """Awaits the end of the operation without blocking the event loop or
        using a thread. Returns on COMPLETE; raises Cancelled, the error of
        an ERRORED operation, or TimedOut after ``timeout`` seconds (the
        operation goes on: wait again or cancel)."""
        if self.closed or self._status >= OperationStatus.COMPLETE:
            return self._outcome()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        conn = self.connector
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        conn._watch(loop)
        handle = (loop.call_later(timeout, _expire, fut, timeout, self)
                  if timeout is not None else None)
        try:
            try:
                self._arm()
            except Misuse:
                # Closed by another thread since the check above (the code
                # between them may let go of the GIL): its outcome, below.
                if not self.closed:
                    raise
            else:
                # Looked at again now that fut is listed: an operation armed
                # already (an earlier wait) that ended since the first look
                # was taken off the connector's queue by whichever loop
                # drained it, waking no future of this wait.
                if not (self.closed or self._status >= OperationStatus.COMPLETE):
                    await fut
        finally:
            if handle is not None:
                handle.cancel()
            waiters = self._waiters
            if waiters is not None:
                waiters.remove(fut)
                if not waiters:
                    self._waiters = None
            conn._unwatch(loop)
        return self._outcome()

    def _wake_waiters(self) -> None:
        """Called when the operation ended (from the connector's queue) or
        was closed: every awaiting wait_for_completion looks again."""
        waiters = self._waiters
        if not waiters:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for fut in list(waiters):
            loop = fut.get_loop()
            if loop is running:
                _wake(fut)
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(_wake, fut)
                except RuntimeError:
                    pass  # closed since the check: nothing runs there any more

    def close(self) -> None:
        """Cancels the operation if it is not final, then releases it: a
        passive operation's memory registration goes at once. It does not
        wait for a peer for memory it can hold: unless it completed, its
        descriptors' memory is held by the connector while data may still
        move through it (its own puts or gets, an admitted writer's puts),
        until libferry says nothing can reach it any more (let go of at the
        connector's next operation close or region call) or the connector is
        closed. Memory inside one of the connector's Regions is not held
        here: libferry keeps the region registered itself while data may
        move (Region.close raises Busy meanwhile).

        Memory given by a bare address (``Descriptor((ptr, size, device))``:
        nothing to hold) is waited for instead, so that it may be freed once
        close() returns. A write or read waits for its own puts or gets in
        flight; without peer error handling (peer_error_handling=False)
        that wait has no bound when the passive side stalls (UCX cannot
        cancel them), and neither Ctrl-C nor a timeout ends it, in close()
        or when the operation is collected (with it, at most 1 s, then the
        endpoint is closed by force). A writable or readable waits until the
        writer or reader it admitted can no longer reach the memory (its
        notice came, or its endpoint failed), for at most 1 s
        (FERRY_OP_DESTROY_FLUSH_MS, as ferry_op_destroy): one that has not
        settled by then (it died unseen, stopped, or its transfer takes
        longer) may still write or read it after close() returns, so keep
        such memory until the connector is closed, or give it as an object
        the connector can hold. Status and error stay readable. Idempotent: a
        close() while another thread's close() runs (a with block's exit
        racing an explicit close) returns once that one does.

        While another thread's publish() of this operation is in flight
        (publish_async's, on its executor), close() returns at once and the
        operation reads as closed; that publish releases it when its call
        returns (cancelling the registration it made) and raises Cancelled.
        While another call is in flight (a wait), it raises Busy."""
        super().close()
        self._wake_waiters()

    def __enter__(self) -> "_Operation":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        except Busy:
            if exc_type is None:
                raise
            # An exception is on its way out of the block (a timeout around
            # another thread's wait, a task's cancellation): do not hide it.
            # Cancelled, which ends that wait; released when collected.
            try:
                self.cancel()
            except FerryError:
                pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status.name}>"


class _PassiveOperation(_Operation):
    def metadata(self) -> RdmaMetadata:
        """The RdmaMetadata to hand to the peer (a capability: whoever holds
        it can reach this memory until the operation is final)."""
        return RdmaMetadata(self._metadata())

    def publish(self, coordinator: "Coordinator", request_id: str,
                access_token: Optional[str] = None, ttl: Optional[int] = None) -> str:
        """Registers this operation at the coordinator under ``request_id``
        and returns the access token (``access_token``, or one libferry
        drew) that the peer must present. The registration lives as long as
        the operation; cancelling or closing it unfinished tells the peer.
        ``ttl``: seconds of the session lease, when this call makes it.
        Raises AlreadyExists when the ID is taken, and Cancelled when the
        operation was closed while the call was in flight (it is released
        then, its registration cancelled: see close()). A coordinator that
        went mid-call (a rollout) is asked again within the client's
        timeout; see ferry_op_publish in ferry/coordinator.h. Ctrl-C ends
        the call at once (KeyboardInterrupt; the operation stays
        unpublished)."""
        return self._publish(coordinator, _text(request_id, "request_id"),
                             _text(access_token, "access_token"), _ttl_s(ttl))

    async def publish_async(self, coordinator: "Coordinator", request_id: str,
                            access_token: Optional[str] = None,
                            ttl: Optional[int] = None) -> str:
        """publish() on the loop's default executor (it makes one RPC).
        Cancelled, or timed out by asyncio.wait_for, it leaves that call
        running; closing the operation meanwhile (leaving its with block)
        is finished by the call when it returns, so nothing stays
        published (see close())."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(self.publish, coordinator, request_id, access_token, ttl))


class WritableOperation(_PassiveOperation):
    """Passive: a remote worker may write into the local descriptors.
    Made by ``Connector.create_writable``. Leaving its ``with`` block
    unfinished cancels it and releases its memory registration (the memory
    itself is held while a writer admitted to it may still write; memory
    given by a bare address is waited for, at most 1 s: see close())."""


class ReadableOperation(_PassiveOperation):
    """Passive: a remote worker may read the local descriptors. Made by
    ``Connector.create_readable``. Leaving its ``with`` block unfinished
    cancels it and releases its memory registration (the memory itself is
    held while a reader admitted to it may still read; memory given by a
    bare address is waited for, at most 1 s: see close())."""


class WriteOperation(_Operation):
    """Active: writes local descriptors into a remote writable. Made by
    ``Connector.begin_write`` / ``begin_write_by_id``. Leaving its ``with``
    block unfinished cancels it. Over memory given by a bare address,
    closing or collecting it waits for its puts in flight, without a bound
    when the passive side stalls and peer error handling is off: see
    close()."""


class ReadOperation(_Operation):
    """Active: reads a remote readable into local descriptors. Made by
    ``Connector.begin_read`` / ``begin_read_by_id``. Leaving its ``with``
    block unfinished cancels it. Over memory given by a bare address,
    closing or collecting it waits for its gets in flight, without a bound
    when the passive side stalls and peer error handling is off: see
    close()."""


# ---- coordinator ----------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the coordinator: the CA that signed it, optionally a client
    certificate and key, and a name to verify instead of the target's host."""
    ca_file: str
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None


class Coordinator(_ferry._Coordinator):
    """A client of ferry-coordinator: ``Coordinator("127.0.0.1:7400")``,
    ``Coordinator(target, tls=TlsConfig(ca_file=...))`` (``tls`` may also be
    a dict of TlsConfig's fields). ``timeout``: seconds per call. One per
    process is plenty; close it (or leave its ``with`` block) after the
    operations bound to it: close() raises Busy while one is open (and
    Ctrl-C during close() leaves it closed, the last duties of its closed
    operations to its session lease). A
    ``with`` block that ends by an exception while one is open lets that
    exception through and leaves the coordinator open; each operation
    keeps it alive, and it is disconnected when collected after them.
    ``keepalive_ms``: while a call is open, ping the coordinator this often
    and drop a connection that does not answer (1000 to 2000000; default:
    FERRY_RPC_KEEPALIVE_MS, else 20000). ``tls_refresh_s``: how often the
    TLS files are read again (1 to 86400; default: FERRY_TLS_REFRESH_S,
    else 60)."""

    def __new__(cls, target: str, tls: Union[TlsConfig, Dict[str, str], None] = None,
                timeout: Optional[float] = None, *, keepalive_ms: Optional[int] = None,
                tls_refresh_s: Optional[int] = None) -> "Coordinator":
        if isinstance(tls, dict):
            tls = TlsConfig(**tls)
        kw: Dict[str, Any] = {}
        if timeout is not None:
            if not 0 < timeout < math.inf:
                raise InvalidArgument(f"coordinator: timeout {timeout} is not > 0 seconds")
            kw["timeout_ms"] = max(1, min(2**31 - 1, int(timeout * 1000)))
        # libferry checks their ranges (and names the field); here only that
        # they are whole numbers a C int holds.
        for name, value in (("keepalive_ms", keepalive_ms), ("tls_refresh_s", tls_refresh_s)):
            if value is not None:
                n = operator.index(value)
                if not -(2**31) < n < 2**31:
                    raise InvalidArgument(f"coordinator: {name} {n} is out of range")
                kw[name] = n
        if tls is not None:
            kw.update(tls_ca_file=_text(tls.ca_file, "tls.ca_file"),
                      tls_cert_file=_text(tls.cert_file, "tls.cert_file"),
                      tls_key_file=_text(tls.key_file, "tls.key_file"),
                      tls_server_name=_text(tls.server_name, "tls.server_name"))
        return super().__new__(cls, _text(target, "target"), **kw)

    def __init__(self, target: str, tls: Union[TlsConfig, Dict[str, str], None] = None,
                 timeout: Optional[float] = None, *, keepalive_ms: Optional[int] = None,
                 tls_refresh_s: Optional[int] = None) -> None:
        self.target = target

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        except Busy:
            if exc_type is None:
                raise
            # An exception is on its way out of the block: do not hide it.
            # The operations still bound keep the coordinator alive; it is
            # disconnected when collected, after them.


# ---- connector ------------------------------------------------------------

_LOG_LEVELS = {"off": -1, "error": 0, "warn": 1, "info": 2, "debug": 3, "trace": 4}


class Connector(_ferry._Connector):
    """One per worker process: libferry's connector (one UCX context and
    worker, its endpoint and key caches, a progress thread). Makes the four
    operations. ``name``: the worker's name in metadata and logs (default
    ``"<hostname>:<pid>"``). ``peer_error_handling``, ``spin_us``: as
    ferry_connector_params_t (default: on, and 50; every side must agree
    on the first: README, "Peer failure").
    ``log_level``: "off" (default), "error" ... "trace", to stderr.
    ``claim_timeout_ms``: how long a write or read waits for the passive
    side to answer its claim (default: FERRY_CLAIM_TIMEOUT_MS, else 30000).
    ``cuda_direct``: the direct path for CUDA memory where UCX can take it
    (default: FERRY_CUDA_DIRECT=1; README, "GPU").

    close() (or leaving its ``with`` block) raises Busy while an operation
    or a region is open. A ``with`` block that ends by an exception while
    one is open lets that exception through and leaves the connector open:
    each operation and region keeps it alive, and it is destroyed when
    collected, after them (an operation is cancelled when collected).

    It belongs to the process that made it: in a forked child every use
    raises Misuse, and close() or collection lets go of it (leaked there)
    without touching the parent's threads. A child forked after Ferry
    started cannot make a new one either (Misuse: UCX and gRPC do not start
    again after a fork); use the spawn or forkserver start method."""

    def __new__(cls, name: Optional[str] = None, *, peer_error_handling: Optional[bool] = None,
                spin_us: Optional[int] = None, log_level: Optional[str] = None,
                claim_timeout_ms: Optional[int] = None,
                cuda_direct: Optional[bool] = None) -> "Connector":
        kw: Dict[str, Any] = {}
        if peer_error_handling is not None:
            kw["peer_error_handling"] = bool(peer_error_handling)
        if spin_us is not None:
            us = _whole(spin_us)
            if not 0 <= us <= 2**31 - 1:
                raise InvalidArgument(f"connector: spin_us {us} is not from 0 to {2**31 - 1}")
            kw["spin_us"] = us
        if log_level is not None:
            if not isinstance(log_level, str) or log_level not in _LOG_LEVELS:
                raise InvalidArgument(f"connector: log_level {log_level!r} is not one of "
                                      f"{', '.join(map(repr, _LOG_LEVELS))}")
            kw["log_level"] = _LOG_LEVELS[log_level]
        if claim_timeout_ms is not None:
            ms = operator.index(claim_timeout_ms)
            if not 1 <= ms <= 2**31 - 1:
                raise InvalidArgument(
                    f"connector: claim_timeout_ms {ms} is not from 1 to {2**31 - 1}")
            kw["claim_timeout_ms"] = ms
        if cuda_direct is not None:
            kw["cuda_direct"] = bool(cuda_direct)
        return super().__new__(cls, _text(name, "name"), **kw)

    def __init__(self, name: Optional[str] = None, *, peer_error_handling: Optional[bool] = None,
                 spin_us: Optional[int] = None, log_level: Optional[str] = None,
                 claim_timeout_ms: Optional[int] = None,
                 cuda_direct: Optional[bool] = None) -> None:
        self._loops: Dict[asyncio.AbstractEventLoop, int] = {}

    # passive

    def create_writable(self, descs: Union[Descriptor, Sequence[Descriptor]]) -> WritableOperation:
        """Registers the local descriptors so that the holder of the returned
        operation's metadata may write into them. Read-only buffers are
        refused."""
        return self._create(0, _descs(descs), WritableOperation)

    def create_readable(self, descs: Union[Descriptor, Sequence[Descriptor]]) -> ReadableOperation:
        """Registers the local descriptors so that the holder of the returned
        operation's metadata may read them."""
        return self._create(1, _descs(descs), ReadableOperation)

    # memory registered once

    def allocate(self, size: int) -> Region:
        """Allocates ``size`` bytes of host memory through UCX, zeroed and
        registered once (ferry_mem_alloc): a Region. UCX's shared-memory
        transports write and read such memory directly, and operations on it
        register nothing. ``size`` must be a positive int (ValueError or
        TypeError otherwise; InvalidArgument for 0, NoMemory when it cannot
        be had, each naming the size)."""
        try:
            if isinstance(size, bool):
                raise TypeError
            size = operator.index(size)
        except TypeError:
            raise TypeError(f"allocate: size must be an int, got {type(size).__name__}"
                            ) from None
        if size < 0:
            raise ValueError(f"allocate: size must be a positive number of bytes, got {size}")
        if size >= 1 << 64:
            raise ValueError(f"allocate: size {size} is beyond any address space")
        return self._allocate(int(size), Region)

    def register_memory(self, buffer: Any) -> Region:
        """Registers the caller's memory once (ferry_mem_register): a
        writable buffer, numpy array, torch tensor, ``(ptr, size, device)``
        or Descriptor, contiguous. The Region keeps the object alive (and a
        buffer exported, so a bytearray cannot resize) until it is closed.
        Every operation on memory inside it then registers nothing of its
        own. AlreadyExists when it overlaps a region of this connector;
        read-only memory, and a Region's descriptor, are refused
        (InvalidArgument)."""
        desc = buffer if isinstance(buffer, _ferry._Descriptor) else Descriptor(buffer)
        return self._register(desc, Region)

    # active, from metadata

    def begin_write(self, local_descs: Union[Descriptor, Sequence[Descriptor]],
                    remote_metadata: Union[RdmaMetadata, bytes, str]) -> WriteOperation:
        """Starts writing the local descriptors into a remote writable. The
        lists must match one to one with equal sizes (SizeMismatch names both
        sizes); a readable's metadata is refused (KindMismatch)."""
        return self._create(2, _descs(local_descs), WriteOperation,
                            _metadata_bytes(remote_metadata))

    def begin_read(self, remote_metadata: Union[RdmaMetadata, bytes, str],
                   local_descs: Union[Descriptor, Sequence[Descriptor]]) -> ReadOperation:
        """Starts reading a remote readable into the local descriptors (which
        must be writable). Same pairing rules as begin_write."""
        return self._create(3, _descs(local_descs), ReadOperation,
                            _metadata_bytes(remote_metadata))

    # active, by request ID through the coordinator

    def begin_write_by_id(self, coordinator: Coordinator, request_id: str, access_token: str,
                          local_descs: Union[Descriptor, Sequence[Descriptor]],
                          wait: Optional[float] = None, ttl: Optional[int] = None
                          ) -> WriteOperation:
        """Looks ``request_id`` up at the coordinator (waiting up to ``wait``
        seconds for it to be published), claims it with ``access_token`` and
        starts the write. Raises NotFound, PermissionDenied,
        FailedPrecondition (taken or no longer open), TimedOut, Unavailable,
        or the pairing errors of begin_write; nothing is written then."""
        return self._begin_by_id(2, coordinator, _text(request_id, "request_id"),
                                 _text(access_token, "access_token"), _wait_ms(wait),
                                 _ttl_s(ttl), _descs(local_descs), WriteOperation)

    def begin_read_by_id(self, coordinator: Coordinator, request_id: str, access_token: str,
                         local_descs: Union[Descriptor, Sequence[Descriptor]],
                         wait: Optional[float] = None, ttl: Optional[int] = None
                         ) -> ReadOperation:
        """The read mirror of begin_write_by_id."""
        return self._begin_by_id(3, coordinator, _text(request_id, "request_id"),
                                 _text(access_token, "access_token"), _wait_ms(wait),
                                 _ttl_s(ttl), _descs(local_descs), ReadOperation)

    async def begin_write_by_id_async(self, coordinator: Coordinator, request_id: str,
                                      access_token: str,
                                      local_descs: Union[Descriptor, Sequence[Descriptor]],
                                      wait: Optional[float] = None,
                                      ttl: Optional[int] = None) -> WriteOperation:
        """begin_write_by_id on the loop's default executor (its claim is an
        RPC that may wait); the transfer itself is then awaited
        with wait_for_completion. Cancelling the awaiting task ends the
        lookup or claim under way on the executor's thread within about
        100 ms (as Ctrl-C ends a blocking one), so the thread is free
        again; an operation begun just before is dropped, and so cancelled
        and released, but bytes it moved before are not undone."""
        return await self._by_id_async(2, WriteOperation, coordinator, request_id, access_token,
                                       local_descs, wait, ttl)

    async def begin_read_by_id_async(self, coordinator: Coordinator, request_id: str,
                                     access_token: str,
                                     local_descs: Union[Descriptor, Sequence[Descriptor]],
                                     wait: Optional[float] = None,
                                     ttl: Optional[int] = None) -> ReadOperation:
        """begin_read_by_id on the loop's default executor."""
        return await self._by_id_async(3, ReadOperation, coordinator, request_id, access_token,
                                       local_descs, wait, ttl)

    async def _by_id_async(self, kind: int, op_type: type, coordinator: Coordinator,
                           request_id: str, access_token: str, local_descs: Any,
                           wait: Optional[float], ttl: Optional[int]) -> Any:
        """begin_*_by_id on the loop's default executor. A CUDA tensor's work
        is that of this thread's current stream (the executor's thread has
        its own): the stream is taken here and waited for there, off the
        loop, before the claim."""
        _text(request_id, "request_id")
        _text(access_token, "access_token")
        local_descs = _descs(local_descs, wait=False)
        streams = _cuda_streams(local_descs)

        cancel = threading.Event()

        def begin() -> Any:
            for stream in streams:
                stream.synchronize()
            return self._begin_by_id(kind, coordinator, request_id, access_token,
                                     _wait_ms(wait),
                                     _ttl_s(ttl), local_descs, op_type, cancel)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, begin)
        except asyncio.CancelledError:
            # The executor's thread would wait out `wait` (asyncio.run's
            # exit with it): its wait reads the event, and gives up.
            cancel.set()
            raise

    # asyncio: one reader per loop on the completion queue's eventfd

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        # list() copies in C, under the GIL: another thread's loop may
        # change the dict while is_closed() runs Python code.
        for closed in [other for other in list(self._loops) if other.is_closed()]:
            del self._loops[closed]  # closed under a waiter that never ended
        n = self._loops.get(loop, 0)
        if n == 0:
            loop.add_reader(self._fd, self._on_readable)
        self._loops[loop] = n + 1

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        n = self._loops.get(loop, 0) - 1
        if n > 0:
            self._loops[loop] = n
            return
        self._loops.pop(loop, None)
        if not loop.is_closed():
            loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        # The drain takes every finished operation off the queue at once,
        # and each is queued only once: one failure must not lose the
        # others' wake-ups (their waiters would wait for good).
        for op in self._drain():
            try:
                op._wake_waiters()
            except Exception as e:  # noqa: BLE001 (reported, as asyncio does)
                asyncio.get_running_loop().call_exception_handler({
                    "message": f"ferry: waking the waiters of {op!r} failed",
                    "exception": e,
                })

    def __enter__(self) -> "Connector":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        except Busy:
            if exc_type is None:
                raise
            # An exception is on its way out of the block: do not hide it.
            # What is still open keeps the connector alive; it is destroyed
            # when collected, after them.

    def __repr__(self) -> str:
        return "<Connector closed>" if self.closed else f"<Connector {self.name!r}>"
