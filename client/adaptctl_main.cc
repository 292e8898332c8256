// adaptctl: the command-line client. `adaptctl` with no command lists the commands.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/adaptctl.h"
#include "client/client.h"
#include "core/files.h"

namespace {
// Flag defaults come from the options structs, so that they are written once.
const adaptd::CtlOptions& Defaults() {
  static const auto* defaults = new adaptd::CtlOptions();
  return *defaults;
}
}  // namespace

// Connection.
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "adaptd server address, host:port");
ABSL_FLAG(std::string, target, "", "the same as --server (an older name)");
ABSL_FLAG(std::string, token, "",
          "bearer token sent with every call; default: the ADAPTD_TOKEN environment variable");
ABSL_FLAG(std::string, tls_ca, "", "PEM file of root certificates: connect with TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM file of a client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM file of the client certificate's key");
ABSL_FLAG(double, timeout, adaptd::ClientOptions().timeout_seconds,
          "deadline of each call in seconds (not of streams or job watches)");
ABSL_FLAG(int, max_message_mb, adaptd::ClientOptions().max_message_bytes >> 20,
          "largest message in MiB; match the server's --max_message_mb");

// create (and demo)
ABSL_FLAG(std::string, arch, Defaults().arch, "create: logreg, mlp, lenet5 or torchscript");
ABSL_FLAG(std::string, input_shape, Defaults().input_shape,
          "create: one example's shape, e.g. 784 or 1,28,28");
ABSL_FLAG(std::string, classes, Defaults().classes,
          "create: the number of classes; stream: the task's classes, e.g. 0,1");
ABSL_FLAG(std::string, hidden, Defaults().hidden, "create, demo: MLP hidden widths (empty: 256,256)");
ABSL_FLAG(std::string, activation, Defaults().activation, "create: relu or tanh (empty: relu)");
ABSL_FLAG(std::string, method, Defaults().method,
          "create: kprior, fromp, ewc, replay, finetune or joint (empty: the server's default)");
ABSL_FLAG(std::string, head, Defaults().head, "create: single or multi");
ABSL_FLAG(int64_t, epochs, Defaults().epochs, "create: epochs per task (0: default)");
ABSL_FLAG(int64_t, min_steps, Defaults().min_steps,
          "create: each job trains for at least this many steps, making more passes over a small "
          "task or online-mode chunk (0: epochs alone)");
ABSL_FLAG(int64_t, batch_size, Defaults().batch_size, "create: training batch size (0: default)");
ABSL_FLAG(double, lr, Defaults().lr, "create: IVON peak learning rate (0: default)");
ABSL_FLAG(double, ess_factor, Defaults().ess_factor,
          "create: IVON samples training weights at ess = factor x examples; above 1, less noise "
          "(0: default 1; the class-incremental and Permuted benchmarks use 16)");
ABSL_FLAG(int64_t, memory_points, Defaults().memory_points,
          "create: memorable examples kept per task (0: default)");
ABSL_FLAG(double, memory_weight, Defaults().memory_weight,
          "create: the memory term's weight (unset: the server's 1; negative: |M| / N)");
ABSL_FLAG(double, clip_radius, Defaults().clip_radius,
          "create: IVON's element-wise clip of the update (0: none)");
ABSL_FLAG(std::string, selection, Defaults().selection, "create: lambda, sensitivity or random");
ABSL_FLAG(std::string, weight_precision, Defaults().weight_precision,
          "create: the K-prior weight term's precision, posterior or prior (empty: posterior)");
ABSL_FLAG(int64_t, adapt_every, Defaults().adapt_every,
          "create: online mode, adapt after every N training examples (0: when a stream closes)");
ABSL_FLAG(double, adapt_after_seconds, Defaults().adapt_after_seconds,
          "create: give training examples that keep_open streams left waiting a job of their own "
          "after this many seconds (0: off)");
ABSL_FLAG(bool, replay_correction, Defaults().replay_correction,
          "create: K-prior replay correction (class-incremental)");
ABSL_FLAG(double, distill_temperature, Defaults().distill_temperature,
          "create: K-prior distillation temperature on the memory (0: off; 2 suits class-incremental)");
ABSL_FLAG(double, new_input_weight, Defaults().new_input_weight,
          "create: K-prior function term on the new task's inputs, through the past heads or "
          "old classes (0: off; the Split TIL benchmark uses 1)");
ABSL_FLAG(int64_t, memory_mixup, Defaults().memory_mixup,
          "create: K-prior mixed inputs per memory example, between two of one task (0: off; the "
          "Permuted benchmark uses 16)");
ABSL_FLAG(double, curvature_weight, Defaults().curvature_weight,
          "create: K-prior logit-curvature term on the past tasks' weights (0: off; the Split TIL "
          "benchmark uses 3000)");
ABSL_FLAG(std::string, torchscript, Defaults().torchscript,
          "create: a module saved with torch.jit.save (sets --arch torchscript)");
ABSL_FLAG(uint64_t, seed, Defaults().seed, "create: the model's seed; predict: the sampling seed");

// stream and data files
ABSL_FLAG(int64_t, task, Defaults().task,
          "stream, adapt: the task (0, 1, ...), required; predict, influence: predict within "
          "this task's classes (-1: none)");
ABSL_FLAG(std::string, split, Defaults().split, "stream: train or eval");
ABSL_FLAG(std::string, format, Defaults().format, "idx, csv or npy (empty: by file name)");
ABSL_FLAG(std::string, labels, Defaults().labels,
          "IDX or NPY labels files, comma-separated, one per data file");
ABSL_FLAG(int64_t, batch, Defaults().batch, "stream, demo: examples per message");
ABSL_FLAG(bool, keep_open, Defaults().keep_open,
          "stream: more training streams of this task follow; do not adapt yet");
ABSL_FLAG(bool, watch, Defaults().watch, "stream, adapt: then follow the adaptation jobs queued");
ABSL_FLAG(bool, select_classes, Defaults().select_classes,
          "stream: send only the examples whose label is in --classes");
ABSL_FLAG(int64_t, limit, Defaults().limit, "stream: send at most this many examples (0: all)");
ABSL_FLAG(int, label_column, Defaults().label_column,
          "CSV: the label column; negative counts from the end");
ABSL_FLAG(bool, csv_header, Defaults().csv_header, "CSV: skip the first line");
ABSL_FLAG(bool, csv_labels, Defaults().csv_labels, "CSV: one column holds labels");

// queries
ABSL_FLAG(int64_t, index, Defaults().index, "predict, influence: the first example of FILE");
ABSL_FLAG(int64_t, count, Defaults().count, "predict: how many examples");
ABSL_FLAG(std::string, mode, Defaults().mode, "predict: bayes, mean or linearized");
ABSL_FLAG(int64_t, samples, Defaults().samples, "predict: samples (0: default)");
ABSL_FLAG(int64_t, version, Defaults().version, "queries: a published version (-1: current)");
ABSL_FLAG(int64_t, top_k, Defaults().top_k, "influence: how many examples");
ABSL_FLAG(std::string, scope, Defaults().scope, "influence, memory-map: memory or all");
ABSL_FLAG(std::string, csv, Defaults().csv, "memory-map: write the table to this CSV file");
ABSL_FLAG(std::string, svg, Defaults().svg, "memory-map: write a scatter plot to this SVG file");

// demo
ABSL_FLAG(std::string, data_dir, Defaults().data_dir, "demo: the Fashion-MNIST files");
ABSL_FLAG(int64_t, per_task, Defaults().per_task, "demo: training examples per task");
ABSL_FLAG(std::string, model, Defaults().model, "demo: the model to create");

namespace {

adaptd::CtlOptions OptionsFromFlags() {
  adaptd::CtlOptions o;
  o.arch = absl::GetFlag(FLAGS_arch);
  o.input_shape = absl::GetFlag(FLAGS_input_shape);
  o.classes = absl::GetFlag(FLAGS_classes);
  o.hidden = absl::GetFlag(FLAGS_hidden);
  o.activation = absl::GetFlag(FLAGS_activation);
  o.method = absl::GetFlag(FLAGS_method);
  o.head = absl::GetFlag(FLAGS_head);
  o.epochs = absl::GetFlag(FLAGS_epochs);
  o.min_steps = absl::GetFlag(FLAGS_min_steps);
  o.batch_size = absl::GetFlag(FLAGS_batch_size);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.ess_factor = absl::GetFlag(FLAGS_ess_factor);
  o.memory_points = absl::GetFlag(FLAGS_memory_points);
  o.selection = absl::GetFlag(FLAGS_selection);
  o.weight_precision = absl::GetFlag(FLAGS_weight_precision);
  o.memory_weight = absl::GetFlag(FLAGS_memory_weight);
  o.clip_radius = absl::GetFlag(FLAGS_clip_radius);
  o.adapt_every = absl::GetFlag(FLAGS_adapt_every);
  o.adapt_after_seconds = absl::GetFlag(FLAGS_adapt_after_seconds);
  o.replay_correction = absl::GetFlag(FLAGS_replay_correction);
  o.distill_temperature = absl::GetFlag(FLAGS_distill_temperature);
  o.new_input_weight = absl::GetFlag(FLAGS_new_input_weight);
  o.curvature_weight = absl::GetFlag(FLAGS_curvature_weight);
  o.memory_mixup = absl::GetFlag(FLAGS_memory_mixup);
  o.torchscript = absl::GetFlag(FLAGS_torchscript);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.task = absl::GetFlag(FLAGS_task);
  o.split = absl::GetFlag(FLAGS_split);
  o.format = absl::GetFlag(FLAGS_format);
  o.labels = absl::GetFlag(FLAGS_labels);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.keep_open = absl::GetFlag(FLAGS_keep_open);
  o.watch = absl::GetFlag(FLAGS_watch);
  o.select_classes = absl::GetFlag(FLAGS_select_classes);
  o.limit = absl::GetFlag(FLAGS_limit);
  o.label_column = absl::GetFlag(FLAGS_label_column);
  o.csv_header = absl::GetFlag(FLAGS_csv_header);
  o.csv_labels = absl::GetFlag(FLAGS_csv_labels);
  o.index = absl::GetFlag(FLAGS_index);
  o.count = absl::GetFlag(FLAGS_count);
  o.mode = absl::GetFlag(FLAGS_mode);
  o.samples = absl::GetFlag(FLAGS_samples);
  o.version = absl::GetFlag(FLAGS_version);
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.scope = absl::GetFlag(FLAGS_scope);
  o.csv = absl::GetFlag(FLAGS_csv);
  o.svg = absl::GetFlag(FLAGS_svg);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.per_task = absl::GetFlag(FLAGS_per_task);
  o.model = absl::GetFlag(FLAGS_model);
  return o;
}

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  if (path.empty()) return std::string();
  return adaptd::ReadFile(path);
}

absl::StatusOr<adaptd::ClientOptions> ClientOptionsFromFlags() {
  adaptd::ClientOptions o;
  o.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  const int mb = absl::GetFlag(FLAGS_max_message_mb);
  if (mb < 1 || mb > 2047) {  // gRPC takes the size as an int
    return absl::InvalidArgumentError(
        absl::StrCat("--max_message_mb must be in [1, 2047]; got ", mb));
  }
  o.max_message_bytes = mb << 20;
  o.token = absl::GetFlag(FLAGS_token);
  if (o.token.empty()) {
    const char* env = std::getenv("ADAPTD_TOKEN");
    if (env != nullptr) o.token = env;
  }
  for (const auto& [flag, pem] : {std::make_pair(&FLAGS_tls_ca, &o.root_certs_pem),
                                  std::make_pair(&FLAGS_tls_cert, &o.client_cert_pem),
                                  std::make_pair(&FLAGS_tls_key, &o.client_key_pem)}) {
    absl::StatusOr<std::string> text = ReadPem(absl::GetFlag(*flag));
    if (!text.ok()) return text.status();
    *pem = *std::move(text);
  }
  return o;
}

// `adaptctl help COMMAND`: the command's usage and each flag its help names, with the flag's
// own description and default.
std::string CommandHelp(const adaptd::CtlCommand& c) {
  std::string text = absl::StrCat("usage: adaptctl [flags] ", c.name, " ", c.args, "\n  ", c.help,
                                  "\n");
  std::vector<std::string> seen;
  for (absl::string_view word : absl::StrSplit(c.help, absl::ByAnyChar(" (),;"))) {
    if (!absl::ConsumePrefix(&word, "--") || word.empty()) continue;
    const std::string name(word);
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) continue;
    seen.push_back(name);
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    absl::StrAppend(&text, "  --", name, ": ", flag->Help(), " (default: ",
                    flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue(), ")\n");
  }
  return text;
}

int Fail(const absl::Status& status) {
  absl::FPrintF(stderr, "adaptctl: %s\n", status.ToString());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(adaptd::CtlUsage());
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() < 2) {
    absl::FPrintF(stderr, "%s", adaptd::CtlUsage());
    return 2;
  }
  const bool help = std::string(positional[1]) == "help";
  if (help && positional.size() == 2) {
    absl::PrintF("%s", adaptd::CtlUsage());
    return 0;
  }
  const std::string name = positional[help ? 2 : 1];
  const std::vector<std::string> args(positional.begin() + (help ? 3 : 2), positional.end());
  const adaptd::CtlCommand* command = nullptr;
  for (const adaptd::CtlCommand& c : adaptd::CtlCommands()) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) {
    absl::FPrintF(stderr, "adaptctl: unknown command '%s'\n\n%s", name, adaptd::CtlUsage());
    return 2;
  }
  if (help) {
    absl::PrintF("%s", CommandHelp(*command));
    return 0;
  }
  const int n = static_cast<int>(args.size());
  if (n < command->min_args || (command->max_args >= 0 && n > command->max_args)) {
    absl::FPrintF(stderr, "usage: adaptctl [flags] %s %s\n  %s\n", command->name, command->args,
                  command->help);
    return 2;
  }

  absl::StatusOr<adaptd::ClientOptions> client_options = ClientOptionsFromFlags();
  if (!client_options.ok()) return Fail(client_options.status());
  const std::string target = absl::GetFlag(FLAGS_target).empty() ? absl::GetFlag(FLAGS_server)
                                                                 : absl::GetFlag(FLAGS_target);
  absl::StatusOr<std::unique_ptr<adaptd::AdaptdClient>> client =
      adaptd::AdaptdClient::Create(target, *client_options);
  if (!client.ok()) return Fail(client.status());
  const adaptd::CtlOptions options = OptionsFromFlags();
  if (absl::Status valid = adaptd::ValidateCtlOptions(options); !valid.ok()) return Fail(valid);
  const absl::Status status = command->run(**client, options, args);
  if (!status.ok()) return Fail(status);
  return 0;
}
