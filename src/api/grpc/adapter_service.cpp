// hyprstream.v1.Adapters: the registry as /v1/adapters serves it, and a stream of published versions.
#include "api/grpc/grpc_status.h"
#include "api/grpc/mailbox.h"
#include "api/grpc/services.h"
#include "api/server/api_context.h"
#include "hyprstream/v1/adapters.grpc.pb.h"
#include "serving/service.h"

namespace hs::api {

namespace {

namespace pb = hyprstream::v1;

void fill_adapter(const AdapterManifest& m, pb::Adapter& out) {
  out.set_name(m.name);
  out.set_version(m.current);
  out.set_rank(m.config.rank);
  out.set_alpha(m.config.alpha);
  out.set_sparsity(m.config.sparsity);
  for (LoraModule t : m.config.targets) out.add_targets(lora_module_name(t));
  out.set_base_model(m.base_fingerprint);
  if (const AdapterVersionInfo* v = m.find(m.current)) {
    out.set_active_values(v->active_values);
    out.set_bytes(v->bytes);
    if (m.dense_values) out.set_density(static_cast<double>(v->active_values) / static_cast<double>(m.dense_values));
  }
  for (const AdapterVersionInfo& x : m.versions) {
    pb::AdapterVersion* v = out.add_versions();
    v->set_version(x.version);
    v->set_parent(x.parent);
    v->set_created(x.created);
    v->set_events(x.events);
    v->set_bytes(x.bytes);
    v->set_scope_examples(x.scope_examples);
  }
}

void fill_trainer(const TrainerStats& s, pb::TrainerStats& out) {
  out.set_accepted(s.accepted);
  out.set_duplicates(s.duplicates);
  out.set_rejected(s.rejected);
  out.set_queue_depth(s.queue_depth);
  out.set_events_applied(s.totals.events_applied);
  out.set_batches(s.totals.batches);
  out.set_last_loss(s.last_loss);
  out.set_update_ms_p50(s.update_ms_p50);
  out.set_update_ms_p99(s.update_ms_p99);
  out.set_quarantined_batches(s.quarantined_batches);
  out.set_failure(s.failure);
}

void require_name(const std::string& name) {
  if (name.empty()) throw Error(ErrorKind::InvalidArgument, "'name' is required");
}

class AdapterService final : public pb::Adapters::Service {
 public:
  explicit AdapterService(ApiContext& ctx) : ctx_(ctx) {}

  grpc::Status List(grpc::ServerContext* call, const pb::ListAdaptersRequest*, pb::ListAdaptersResponse* out) override {
    return guarded(ctx_, *call, [&] {
      for (const AdapterListing& a : ctx_.service.registry().list()) {
        pb::Adapter* x = out->add_adapters();
        x->set_name(a.name);
        x->set_error(a.error);
        if (a.manifest) describe(*a.manifest, *x);
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status Get(grpc::ServerContext* call, const pb::GetAdapterRequest* in, pb::Adapter* out) override {
    return guarded(ctx_, *call, [&] {
      require_name(in->name());
      describe(ctx_.service.registry().manifest(in->name()), *out);
      return grpc::Status::OK;
    });
  }

  grpc::Status Create(grpc::ServerContext* call, const pb::CreateAdapterRequest* in, pb::Adapter* out) override {
    return guarded(ctx_, *call, [&] {
      require_name(in->name());
      AdapterConfig c;
      if (in->has_rank()) c.rank = in->rank();
      if (in->has_alpha()) c.alpha = in->alpha();
      if (in->has_sparsity()) c.sparsity = in->sparsity();
      if (in->has_seed()) c.seed = in->seed();
      if (in->targets_size() > 0) {
        c.targets.clear();
        for (const std::string& t : in->targets()) c.targets.push_back(parse_lora_module(t));
      }
      fill_adapter(ctx_.service.registry().create(in->name(), c), *out);
      return grpc::Status::OK;
    });
  }

  grpc::Status Delete(grpc::ServerContext* call, const pb::DeleteAdapterRequest* in,
                      pb::DeleteAdapterResponse* out) override {
    return guarded(ctx_, *call, [&] {
      require_name(in->name());
      ctx_.service.stop_trainer(in->name());  // its queue is applied and checkpointed first
      ctx_.service.registry().remove(in->name());
      out->set_deleted(in->name());
      return grpc::Status::OK;
    });
  }

  grpc::Status Rollback(grpc::ServerContext* call, const pb::RollbackAdapterRequest* in, pb::Adapter* out) override {
    return guarded(ctx_, *call, [&] {
      require_name(in->name());
      if (in->version() == 0) throw Error(ErrorKind::InvalidArgument, "'version' is required (a kept version)");
      ctx_.service.stop_trainer(in->name());  // the next event starts a trainer from the rolled-back version
      fill_adapter(ctx_.service.registry().rollback(in->name(), in->version()), *out);
      return grpc::Status::OK;
    });
  }

  grpc::Status WatchVersions(grpc::ServerContext* call, const pb::WatchVersionsRequest* in,
                             grpc::ServerWriter<pb::VersionPublished>* writer) override {
    return guarded(ctx_, *call, [&] {
      const std::string domain = in->domain() == "*" ? "" : in->domain();
      auto box = std::make_shared<Mailbox<pb::VersionPublished>>(*call, kSubscriptionBytes);
      struct Listening {  // unsubscribes however the call ends
        hs::Service& service;
        uint64_t id;
        ~Listening() { service.unsubscribe(id); }
      };
      const Listening listening{ctx_.service, ctx_.service.subscribe(domain, [box](const DomainEvent& e) {
        if (e.kind != DomainEvent::Kind::Applied) return;
        pb::VersionPublished v;
        v.set_domain(e.domain);
        v.set_version(e.report->version);
        v.set_seq(e.seq);
        for (const std::string& id : e.ids) v.add_ids(id);
        v.set_loss(e.report->loss);
        box->put(std::move(v));
      })};
      while (!call->IsCancelled()) {
        bool written = true;
        for (const pb::VersionPublished& v : box->take(*call)) written = written && writer->Write(v);
        if (!written) break;
      }
      return grpc::Status::OK;
    });
  }

 private:
  void describe(const AdapterManifest& m, pb::Adapter& out) {
    fill_adapter(m, out);
    if (auto s = ctx_.service.trainer_stats(m.name)) fill_trainer(*s, *out.mutable_trainer());
  }

  ApiContext& ctx_;
};

}  // namespace

std::unique_ptr<grpc::Service> make_adapter_service(ApiContext& ctx) {
  return std::make_unique<AdapterService>(ctx);
}

}  // namespace hs::api
