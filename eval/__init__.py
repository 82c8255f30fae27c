"""Measuring a subject's functional wellbeing (the notebook API).

    from welfare_offsets.eval.evaluate import EvalConfig, evaluate      # compute: subject + stimuli -> Evaluation
    from welfare_offsets.eval.run import run_evaluation                 # end to end: load, evaluate, write outputs, W&B
    from welfare_offsets.eval.study.sweep import SweepConfig, measure_subject, summarise_sweep   # a scale study over many subjects

Kept free of imports so that `import welfare_offsets.eval.experiences` stays light; heavy modules load on use.
"""
