"""Writes the gRPC request bodies the h2load benchmarks send, into the working directory.

check.bin   portcullis.v1.CheckRequest {tenant_id: "bench", key: "user-1"}
rls.bin     envoy RateLimitRequest {domain: "bench", descriptors: [{client: c1}], hits_addend: 1}
verify.bin  portcullis.v1.VerifyTokenRequest with the token in $TOKEN (only when it is set)
bench.yaml  the Envoy limits rls.bin meets on Portcullis: 1,000,000/s per client value
Each is one gRPC message frame: a zero byte, the length (4 bytes, big-endian), the protobuf.
"""
import os
import struct


def varint(n):
    out = b''
    while n >= 0x80:
        out += bytes([n & 0x7f | 0x80])
        n >>= 7
    return out + bytes([n])


def field(number, payload):
    """A length-delimited field."""
    return bytes([number << 3 | 2]) + varint(len(payload)) + payload


def frame(message):
    return b'\x00' + struct.pack('>I', len(message)) + message


open('check.bin', 'wb').write(frame(field(1, b'bench') + field(3, b'user-1')))
descriptor = field(1, field(1, b'client') + field(2, b'c1'))
open('rls.bin', 'wb').write(frame(field(1, b'bench') + field(2, descriptor) + bytes([3 << 3, 1])))
if os.environ.get('TOKEN'):
    open('verify.bin', 'wb').write(frame(field(1, os.environ['TOKEN'].encode())))
open('bench.yaml', 'w').write(
    "domain: bench\ndescriptors:\n  - key: client\n"
    "    rate_limit: { unit: second, requests_per_unit: 1000000 }\n")
