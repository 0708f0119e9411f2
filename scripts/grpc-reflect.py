#!/usr/bin/env python3
"""A reflection-only gRPC client (a small grpcurl): it knows nothing of
Tessera's .proto files and learns every service, method and message from
the server's reflection service.

    scripts/grpc-reflect.py --addr 127.0.0.1:50051 list
    scripts/grpc-reflect.py --addr 127.0.0.1:50051 describe tessera.v1.Tessera
    scripts/grpc-reflect.py --addr 127.0.0.1:50051 call tessera.v1.Tessera/IndexInfo '{}'
    scripts/grpc-reflect.py --addr 127.0.0.1:50051 call tessera.v1.Tessera/Search \\
        '{"queries": [{"text": "tides", "k": 3, "retriever": "RETRIEVER_BM25"}]}'

The same with grpcurl, for those who have it:
    grpcurl -plaintext 127.0.0.1:50051 list
    grpcurl -plaintext -d '{"queries":[{"text":"tides","k":3}]}' 127.0.0.1:50051 tessera.v1.Tessera/Search

Needs: pip install grpcio grpcio-reflection (scripts/setup puts them in .venv).
"""
import argparse
import json
import sys

import grpc

from grpc_auth import add_arguments, channel_for
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)




def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--timeout", type=float, default=30.0)
    add_arguments(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list services")
    d = sub.add_parser("describe", help="describe a service or message")
    d.add_argument("symbol")
    c = sub.add_parser("call", help="call a unary method with a JSON request")
    c.add_argument("method", help="SERVICE/METHOD, e.g. tessera.v1.Tessera/IndexInfo")
    c.add_argument("request", nargs="?", default="{}", help="request as JSON")
    args = ap.parse_args()

    with channel_for(args) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(db)
        if args.cmd == "list":
            for name in db.get_services():
                print(name)
            return
        if args.cmd == "describe":
            try:
                s = pool.FindServiceByName(args.symbol)
                print(f"service {s.full_name}")
                for m in s.methods:
                    cs = "stream " if m.client_streaming else ""
                    ss = "stream " if m.server_streaming else ""
                    print(f"  rpc {m.name}({cs}{m.input_type.full_name}) returns "
                          f"({ss}{m.output_type.full_name})")
            except KeyError:
                msg = pool.FindMessageTypeByName(args.symbol)
                print(f"message {msg.full_name}")
                for f in msg.fields:
                    print(f"  {f.name} = {f.number}")
            return
        service_name, _, method_name = args.method.partition("/")
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        if method.client_streaming or method.server_streaming:
            sys.exit("error: only unary methods can be called here")
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(args.request, req_cls())
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        try:
            response = call(request, timeout=args.timeout)
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}))
            sys.exit(2)
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))


if __name__ == "__main__":
    main()
