"""Speech for Kyutai Moshi: moshi-finetune's conversations encoded into the codes the trainer reads
(`encode`), and a converted model played from audio to audio (`infer`)."""
