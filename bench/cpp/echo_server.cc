// bench/proxy.py's upstream in C++: bench.Echo/Say answers the request's bytes, served by gRPC C++'s
// callback API as a generic service (no message decoded, no generated code: like the grpclib and Node
// upstreams), so that the upstream's own CPU per call is as small as a production gRPC server's gets.
// Any other method answers UNIMPLEMENTED. Built by bench/proxy.py (--upstream cpp) with g++ against
// Debian's libgrpc++-dev. Usage: echo_server PORT
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

namespace {

// One call: read the request's one message, answer it with it and the OK status.
class EchoReactor : public grpc::ServerGenericBidiReactor {
 public:
  explicit EchoReactor(grpc::GenericCallbackServerContext* context) {
    if (context->method() != "/bench.Echo/Say") {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "only /bench.Echo/Say"));
      return;
    }
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client sent no message (or cancelled)
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    // The reply and the status in one batch (a write marked last is held until Finish: StartWriteLast
    // and then Finish in OnWriteDone would wait for each other).
    StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer message_;
};

class Echo : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new EchoReactor(context);
  }
};

std::unique_ptr<grpc::Server> server;

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: echo_server PORT\n";
    return 2;
  }
  Echo echo;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials());
  builder.RegisterCallbackGenericService(&echo);
  server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "echo_server: cannot listen on 127.0.0.1:" << argv[1] << "\n";
    return 1;
  }
  // SIGTERM (bench/proxy.py stopping it): leave at once, as the other upstreams do.
  std::signal(SIGTERM, [](int) { std::_Exit(0); });
  server->Wait();
  return 0;
}
