#include "api/server/views.h"

#include "common/utf8.h"

namespace hs::api {

nlohmann::json adapter_json(const AdapterManifest& m) {
  const AdapterVersionInfo* v = m.find(m.current);
  std::vector<std::string> targets;
  for (LoraModule t : m.config.targets) targets.push_back(lora_module_name(t));
  nlohmann::json versions = nlohmann::json::array();
  for (const auto& x : m.versions)
    versions.push_back({{"version", x.version}, {"parent", x.parent}, {"created", x.created}, {"events", x.events},
                        {"bytes", x.bytes}, {"scope_examples", x.scope_examples}});
  return {{"name", m.name},
          {"version", m.current},
          {"rank", m.config.rank},
          {"alpha", m.config.alpha},
          {"sparsity", m.config.sparsity},
          {"targets", targets},
          {"active_values", v->active_values},
          {"density", m.dense_values ? static_cast<double>(v->active_values) / static_cast<double>(m.dense_values) : 0},
          {"bytes", v->bytes},
          {"events", v->events},
          {"created", v->created},
          {"scope_examples", v->scope_examples},
          {"base_model", m.base_fingerprint},
          {"versions", versions}};
}

nlohmann::json trainer_stats_json(const TrainerStats& s) {
  nlohmann::json j = {{"domain", s.domain},
                      {"version", s.version},
                      {"accepted", s.accepted},
                      {"duplicates", s.duplicates},
                      {"rejected", s.rejected},
                      {"busy", s.busy},
                      {"queue_depth", s.queue_depth},
                      {"batches", s.totals.batches},
                      {"events_applied", s.totals.events_applied},
                      {"examples", s.totals.examples},
                      {"gradients", s.totals.gradients},
                      {"steps", s.totals.steps},
                      {"tokens_trained", s.totals.tokens_trained},
                      {"replayed_batches", s.replayed_batches},
                      {"quarantined_batches", s.quarantined_batches},
                      {"quarantined_events", s.quarantined_events},
                      {"last_quarantine_reason", s.last_quarantine_reason},
                      {"last_loss", s.last_loss},
                      {"recent_losses", s.recent_losses},
                      {"update_ms_p50", s.update_ms_p50},
                      {"update_ms_p99", s.update_ms_p99},
                      {"log_bytes", s.log_bytes},
                      {"rejected_versions", s.rejected_versions},
                      {"guard", {{"max_drift", s.max_drift},
                                 {"last_drift", s.last_drift >= 0 ? nlohmann::json(s.last_drift) : nlohmann::json()}}}};
  if (!s.failure.empty()) j["failure"] = s.failure;
  if (s.epsilon > 0) j["privacy"] = {{"epsilon", s.epsilon}, {"delta", s.delta}};
  return j;
}

nlohmann::json quarantined_json(const QuarantinedBatch& q) {
  nlohmann::json j = {{"seq", q.seq}, {"ids", q.ids}, {"reason", utf8_escape_invalid(q.reason)}, {"file", q.file}};
  if (q.rejection)
    j["guard"] = {{"drift", q.rejection->drift},
                  {"max_drift", q.rejection->max_drift},
                  {"worst_canary", q.rejection->worst_canary},
                  {"candidate", q.rejection->candidate}};
  return j;
}

nlohmann::json batch_report_json(const BatchReport& r) {
  nlohmann::json j = {{"seq", r.seq},
                      {"version", r.version},
                      {"loss", r.examples > 0 ? nlohmann::json(r.loss) : nlohmann::json()},
                      {"final_loss", r.examples > 0 ? nlohmann::json(r.final_loss) : nlohmann::json()},
                      {"steps", r.steps},
                      {"tokens", r.tokens},
                      {"examples", r.examples},
                      {"gradients", r.gradients},
                      {"grad_norm", r.grad_norm},
                      {"update_ms", r.update_ms},
                      {"replayed", r.replayed},
                      {"ids", r.ids}};
  if (r.drift >= 0) j["drift"] = r.drift;
  if (r.teacher_ms > 0) j["teacher_ms"] = r.teacher_ms;
  if (r.scope_examples > 0) j["scope_examples"] = r.scope_examples;
  if (r.rehearsed > 0) {
    j["rehearsed"] = r.rehearsed;
    j["rehearsal_loss"] = r.rehearsal_loss;
  }
  return j;
}

nlohmann::json result_adapter_json(const GenerationResult& r) {
  if (r.adapter.empty()) return nullptr;
  nlohmann::json j = {{"name", r.adapter}, {"version", r.adapter_version}};
  if (!r.adapter_scope.empty())
    j["scope"] = {{"decision", r.adapter_scope}, {"similarity", r.scope_similarity}, {"radius", r.scope_radius},
                  {"recalled_tokens", r.recalled_tokens}};
  return j;
}

}  // namespace hs::api
