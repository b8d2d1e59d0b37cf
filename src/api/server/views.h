#pragma once
// The JSON forms of an adapter's manifest, a trainer's figures and a result's adapter, one for every place that prints them: the
// HTTP API and the CLI's --json output.
#include <nlohmann/json.hpp>

#include "adapters/manifest.h"
#include "learning/trainer.h"
#include "serving/generate.h"

namespace hs::api {

// Name, current version, configuration, density, size, event count, and every kept version.
nlohmann::json adapter_json(const AdapterManifest& manifest);
// Counters, losses (the last 256 batches), update latency, quarantine and privacy figures.
nlohmann::json trainer_stats_json(const TrainerStats& stats);
// A batch set aside: seq, ids, reason, where its events are, and the guard's figures when it refused it.
nlohmann::json quarantined_json(const QuarantinedBatch& batch);
// An applied batch: version, losses, steps, canary drift and timing.
nlohmann::json batch_report_json(const BatchReport& report);
// The adapter a request asked for (null: none), and with a scope whether it answered ("inside") or the base
// model did ("outside").
nlohmann::json result_adapter_json(const GenerationResult& result);

}  // namespace hs::api
