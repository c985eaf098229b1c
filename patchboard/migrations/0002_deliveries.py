"""
The relay's count of its deliveries of an entry no worker has claimed
(``deliveries``): an entry is delivered when a worker claims it, and the
relay delivers an unclaimed one again after a wait that grows with it. The
relay's partial index keeps its condition (``delivered_at IS NULL``: unclaimed).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("patchboard", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="outboxentry",
            name="deliveries",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
