"""Measuring a subject's functional wellbeing (the notebook API).

    from eval.evaluate import EvalConfig, evaluate      # compute: subject + stimuli -> Evaluation
    from eval.run import run_evaluation                 # end to end: load, evaluate, write outputs, W&B
    from eval.sweep import SweepConfig, measure_subject, summarise_sweep   # a scale study over many subjects

Kept free of imports so that `import eval.experiences` stays light; heavy modules load on use.
"""
