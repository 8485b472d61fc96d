"""Speech for Kyutai Moshi: moshi-finetune's conversations encoded into the codes the trainer reads
(`encode`), a converted model played from audio to audio (`infer`) or served to moshi's clients
and web UI (`serve`), and small random parts to try them offline (`kit`)."""
